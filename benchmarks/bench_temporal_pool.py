"""Temporal attention pooling at the recipe's level 1 -> 2 shape (N 196 tokens, 12 heads x 64, window 4), forward
and forward + backward: the eager reference, ``torch.compile`` of it and, on CUDA, the Triton kernels. Bytes: k, v
(and the mask) read, the output written; the backward adds k, v and the output gradient read, dk and dv written."""
from __future__ import annotations

import torch

from benchmarks.harness import CASES, Case, cli, run_cases, seeded_copies
from hjepa_fast.kernels.temporal_pool import temporal_attention_pool_reference, temporal_attention_pool_triton

N, HEADS, DH, WINDOW = 196, 12, 64, 4


def specs(device: torch.device, quick: bool) -> list[tuple[int, int, torch.dtype, bool]]:
    """(B, T, dtype, masked) from ``cases.yaml``."""
    return [(B, T, getattr(torch, dtype), masked)
            for B, T, dtype, masked in CASES["temporal_pool"][device.type + ("_quick" if quick else "")]]


def pool_inputs(B: int, T: int, dtype: torch.dtype, masked: bool, device: torch.device,
                g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``(q, k, v, visible, grad)``: ``k``, ``v`` ``[B, T, N, H, Dh]`` and ``q`` requiring gradients, ``visible``
    ``[B, T, N]`` (a quarter hidden) or None, ``grad`` the pooled output's gradient."""
    k, v = (torch.randn(B, T, N, HEADS, DH, device=device, generator=g, dtype=dtype).requires_grad_() for _ in "kv")
    q = (torch.randn(HEADS, DH, device=device, generator=g, dtype=dtype) * DH**-0.5).requires_grad_()
    visible = torch.rand(B, T, N, device=device, generator=g) > 0.25 if masked else None
    return q, k, v, visible, torch.randn(B, T // WINDOW, N, HEADS, DH, device=device, generator=g, dtype=dtype)


def pool_call(fn, mode: str):
    def call(q, k, v, visible, grad):
        if mode == "fwd":
            with torch.no_grad():
                return fn(q, k, v, WINDOW, visible)
        return torch.autograd.grad(fn(q, k, v, WINDOW, visible), (q, k, v), grad)
    return call


def pool_bytes(B: int, T: int, size: int, masked: bool) -> dict[str, int]:
    """The bytes the op must move (q is negligible) by mode: ``fwd`` and ``fwd+bwd``."""
    kv, mask = B * T * N * HEADS * DH, B * T * N if masked else 0
    fwd = (2 * kv + kv // WINDOW) * size + mask
    return {"fwd": fwd, "fwd+bwd": fwd + (4 * kv + kv // WINDOW) * size + mask}


def pool_copies(B: int, T: int, dtype: torch.dtype, masked: bool, device: torch.device) -> list[tuple]:
    """Seeded inputs in as many copies as a cold timing needs."""
    return seeded_copies(lambda g: pool_inputs(B, T, dtype, masked, device, g),
                         pool_bytes(B, T, dtype.itemsize, False)["fwd"], device)


def setup(spec: tuple[int, int, torch.dtype, bool], device: torch.device, quick: bool = False):
    B, T, dtype, masked = spec
    copies, nbytes = pool_copies(B, T, dtype, masked, device), pool_bytes(B, T, dtype.itemsize, masked)
    paths = {"eager": temporal_attention_pool_reference}
    if device.type == "cuda" or not quick:  # compiling on a CPU smoke run costs more than it shows
        paths["compiled"] = torch.compile(temporal_attention_pool_reference)
    if device.type == "cuda":
        paths["triton"] = temporal_attention_pool_triton
    shape = f"B{B} T{T} {str(dtype).removeprefix('torch.')}{' masked' if masked else ''}"
    for mode in ("fwd", "fwd+bwd"):
        yield Case(f"{shape} {mode}", {name: pool_call(fn, mode) for name, fn in paths.items()},
                   {"frac_copy": nbytes[mode]}, {"shape": shape, "mode": mode}, inputs=copies)


if __name__ == "__main__":
    run_cases("temporal_pool", cli(__doc__).parse_args(), specs, setup)
