"""What every kernel's host side shares: launch arithmetic in plain Python, and the one allocation of
kernel outputs.

``triton.next_power_of_2`` and ``triton.cdiv`` are constexpr functions in Triton 3.8: each call goes through
a wrapper that costs ~1.9 us on our CPU (40x the arithmetic), and a pooling forward + backward made eight of
them, time a GPU waits for when the kernels are short (``benchmarks.bench_host_overhead``).

Launch settings (tile sizes, warps, pipelining) are not module state: each op has a pure, cached function of
(shape, dtype, device) returning a frozen dataclass (``masked_loss_launch``, ``temporal_pool_launch``,
``ema_launch``), and its public functions take ``launch=`` (None: computed) for sweeps and tests."""
from __future__ import annotations

import torch


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ``b``."""
    return -(-a // b)


def is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A kernel output (``torch.empty``): every kernel allocates its outputs here, and nowhere else, so that
    the kernel tests can fill them with NaN instead (``tests/kernels/conftest.py``), and an element a kernel
    forgets to write fails the comparison with the reference."""
    return torch.empty(shape, dtype=dtype, device=device)
