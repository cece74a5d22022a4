"""Host-side launch arithmetic in plain Python.

``triton.next_power_of_2`` and ``triton.cdiv`` are constexpr functions in Triton 3.8: each call goes through
a wrapper that costs ~1.9 us on our CPU (40x the arithmetic), and a pooling forward + backward made eight of
them, time a GPU waits for when the kernels are short (``benchmarks.bench_host_overhead``)."""
from __future__ import annotations


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ``b``."""
    return -(-a // b)
