"""Temporal attention pooling at the recipe's level 1 -> 2 shape (N 196 tokens, 12 heads x 64, window 4), forward
and forward + backward: the eager reference, SDPA on the same problem, ``torch.compile`` of the reference and, on
CUDA, the Triton kernels. Bytes: k, v (and the mask) read, the output written; the backward adds k, v and the output
gradient read, dk and dv written.

    python -m benchmarks.bench_temporal_pool [--quick] [--device cpu|cuda] [--out DIR]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.harness import Case, Cycling, cli, cold_copies, run_cases
from hjepa_fast.kernels.temporal_pool import temporal_attention_pool_reference, temporal_attention_pool_triton

N, HEADS, DH, WINDOW = 196, 12, 64, 4
SDPA_MAX_BATCH = 65_535


def sdpa_pool(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
              visible: torch.Tensor | None = None) -> torch.Tensor:
    """The same pooling through SDPA: rows ``[B*W*N, H, window, Dh]`` (the copies part of its time), in chunks of
    at most 65,535 (SDPA's CUDA kernels fail from 65,536 rows)."""
    B, T, N_, H, Dh = k.shape
    W = T // window

    def rows(x: torch.Tensor) -> torch.Tensor:  # [B, T, N, H, Dh] -> [B*W*N, H, window, Dh]
        return x.reshape(B, W, window, N_, H, Dh).permute(0, 1, 3, 4, 2, 5).reshape(B * W * N_, H, window, Dh)

    kr, vr = rows(k), rows(v)
    qr = q.to(k.dtype).reshape(1, H, 1, Dh).expand(kr.shape[0], H, 1, Dh)
    mask = None
    if visible is not None:
        mask = visible.reshape(B, W, window, N_).permute(0, 1, 3, 2).reshape(B * W * N_, 1, 1, window)
    outs = [F.scaled_dot_product_attention(qr[s:s + SDPA_MAX_BATCH], kr[s:s + SDPA_MAX_BATCH], vr[s:s + SDPA_MAX_BATCH],
                                           None if mask is None else mask[s:s + SDPA_MAX_BATCH])
            for s in range(0, kr.shape[0], SDPA_MAX_BATCH)]
    out = torch.cat(outs).reshape(B, W, N_, H, Dh)
    if visible is not None:  # SDPA gives NaN for an all-hidden row; the contract is zeros
        out = out.masked_fill(~visible.reshape(B, W, window, N_).any(2)[..., None, None], 0.0)
    return out


def specs(device: torch.device, quick: bool) -> list[tuple[int, int, torch.dtype, bool]]:
    """(B, T, dtype, masked): on CUDA a few hundred MB (B*T = 1024 frames: k is 308 MB in bf16), on CPU a few MB."""
    if device.type == "cuda":
        bf16 = torch.bfloat16
        return [(4, 8, bf16, False)] if quick else [(32, 32, bf16, False), (32, 32, bf16, True),
                                                    (16, 32, torch.float32, False)]
    return [(1, 8, torch.float32, False), (1, 8, torch.float32, True)] if quick else [
        (2, 16, torch.float32, False), (2, 16, torch.bfloat16, True)]


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
    g, read = torch.Generator(device=device).manual_seed(0), pool_bytes(B, T, torch.finfo(dtype).bits // 8, False)
    return [pool_inputs(B, T, dtype, masked, device, g) for _ in range(cold_copies(read["fwd"], device))]


def setup(spec: tuple[int, int, torch.dtype, bool], device: torch.device, quick: bool = False):
    B, T, dtype, masked = spec
    copies, nbytes = pool_copies(B, T, dtype, masked, device), pool_bytes(B, T, torch.finfo(dtype).bits // 8, masked)
    paths = {"eager": temporal_attention_pool_reference, "sdpa": sdpa_pool}
    if device.type == "cuda" or not quick:  # compiling on a CPU smoke run costs more than it shows
        paths["compiled"] = torch.compile(temporal_attention_pool_reference)
    if device.type == "cuda":
        paths["triton"] = temporal_attention_pool_triton
    shape = f"B{B} T{T} {str(dtype).removeprefix('torch.')}{' masked' if masked else ''}"
    for mode in ("fwd", "fwd+bwd"):
        yield Case(f"{shape} {mode}", {name: Cycling(pool_call(fn, mode), copies) for name, fn in paths.items()},
                   {"frac_copy": nbytes[mode]}, {"shape": shape, "mode": mode})


if __name__ == "__main__":
    run_cases("temporal_pool", cli(__doc__).parse_args(), specs, setup)
