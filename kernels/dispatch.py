"""Which implementation the public kernel functions run: one process-wide switch.

- ``"auto"`` (default): Triton for CUDA tensors, the PyTorch path (reference or torch-native fast path)
  for everything else;
- ``"reference"``: always the plain PyTorch reference (the ground truth; kernels off);
- ``"triton"``: always Triton, also for CPU tensors, which needs ``TRITON_INTERPRET=1`` (tests).

The model sets it from ``model.kernels``; ``with kernel_mode("reference"): ...`` scopes it.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

MODES = ("auto", "reference", "triton")
_mode = "auto"


def set_kernel_mode(mode: str) -> None:
    global _mode
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}; choose one of {MODES}")
    _mode = mode


def get_kernel_mode() -> str:
    return _mode


@contextlib.contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    previous = _mode
    set_kernel_mode(mode)
    try:
        yield
    finally:
        set_kernel_mode(previous)


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the public function should launch its Triton kernel for ``tensor``."""
    if _mode == "reference":
        return False
    if _mode == "triton":
        if not tensor.is_cuda and not interpreter_active():
            raise RuntimeError("kernel mode 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before import")
        return True
    return tensor.is_cuda
