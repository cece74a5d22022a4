"""Every kernel test runs with poisoned outputs: each kernel output starts as NaN instead of whatever
``torch.empty`` returns, so an element a kernel forgets to write fails the comparison with the reference
(the kernels allocate every output through ``hjepa_fast.kernels.launch.empty``)."""
from __future__ import annotations

import pytest
import torch

from hjepa_fast.kernels import launch


def nan_filled(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(launch, "empty", nan_filled)
