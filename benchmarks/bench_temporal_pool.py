"""Temporal attention pooling at the recipe's level 1 -> 2 shape (ViT-B: N = 196 tokens, D = 768 = 12 heads
x 64, window 4): eager reference, ``torch.compile`` of the reference, SDPA on the same problem, and the
Triton kernels (CUDA only), forward and forward + backward; each timed as a caller sees it (``do_bench``:
host launch work included where the device waits for it) and on CUDA once more as ``<path> graph``: the
same calls captured in a CUDA graph and replayed, the device's time alone (speedups against ``eager graph``).

Bytes counted (the minimum the op must move; q [H, Dh] is negligible and left out):
- fwd: read k and v once, write the pooled output (plus the bool mask when there is one);
- fwd+bwd: the forward's bytes, plus the backward's read of k, v and the output gradient and write of
  dk and dv (plus the mask again).
GB/s = bytes / median time; ``frac_copy`` = that over the copy bandwidth measured in the same run.

SDPA: the query [H, Dh] expanded to ``[B*W*N, H, 1, Dh]``, keys/values permuted to ``[B*W*N, H, window, Dh]``
(the copies are part of its time: that is what using SDPA here costs); the flattened batch is run in
chunks of at most 65,535 (SDPA's CUDA kernels fail at batch >= 65,536: pytorch #146704, #142228).

``python -m benchmarks.bench_temporal_pool [--quick] [--device cpu|cuda] [--out DIR]``
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from benchmarks.harness import copy_bandwidth, device_info, measure, parse_args, time_against_eager, write_results
from hjepa_fast.kernels.temporal_pool import temporal_attention_pool_reference, temporal_attention_pool_triton

N, HEADS, DH, WINDOW = 196, 12, 64, 4
SDPA_MAX_BATCH = 65_535


def sdpa_pool(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
              visible: torch.Tensor | None = None) -> torch.Tensor:
    """The same pooling through ``F.scaled_dot_product_attention`` (one query per row, ``window`` keys)."""
    B, T, N_, H, Dh = k.shape
    W = T // window

    def rows(x: torch.Tensor) -> torch.Tensor:  # [B, T, N, H, Dh] -> [B*W*N, H, window, Dh]
        return x.reshape(B, W, window, N_, H, Dh).permute(0, 1, 3, 4, 2, 5).reshape(B * W * N_, H, window, Dh)

    kr, vr = rows(k), rows(v)
    qr = q.to(k.dtype).reshape(1, H, 1, Dh).expand(kr.shape[0], H, 1, Dh)
    mask = None
    if visible is not None:
        mask = visible.reshape(B, W, window, N_).permute(0, 1, 3, 2).reshape(B * W * N_, 1, 1, window)
    outs = []
    for s in range(0, kr.shape[0], SDPA_MAX_BATCH):
        sl = slice(s, s + SDPA_MAX_BATCH)
        outs.append(F.scaled_dot_product_attention(qr[sl], kr[sl], vr[sl], None if mask is None else mask[sl]))
    out = torch.cat(outs).reshape(B, W, N_, H, Dh)
    if visible is not None:  # SDPA gives NaN for an all-hidden row; the contract is zeros
        out = out.masked_fill(~visible.reshape(B, W, window, N_).any(2)[..., None, None], 0.0)
    return out


def cases(device: torch.device, quick: bool) -> list[tuple[int, int, torch.dtype, bool]]:
    """(B, T, dtype, masked). On CUDA the tensors are a few hundred MB (B*T = 1024 frames: k is 308 MB
    in bf16); on CPU and with --quick, a few MB."""
    if device.type == "cuda":
        if quick:
            return [(4, 8, torch.bfloat16, False)]
        return [(32, 32, torch.bfloat16, False), (32, 32, torch.bfloat16, True), (16, 32, torch.float32, False)]
    if quick:
        return [(1, 8, torch.float32, False), (1, 8, torch.float32, True)]
    return [(2, 16, torch.float32, False), (2, 16, torch.bfloat16, True)]


def pool_inputs(B: int, T: int, dtype: torch.dtype, masked: bool, device: torch.device,
                g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``(q, k, v, visible, grad)`` at the recipe's level 1 -> 2 shape: ``k``, ``v`` ``[B, T, N, H, Dh]``,
    ``visible`` ``[B, T, N]`` (a quarter hidden) or None, ``grad`` the pooled output's gradient."""
    k, v = (torch.randn(B, T, N, HEADS, DH, device=device, generator=g, dtype=dtype) for _ in range(2))
    q = torch.randn(HEADS, DH, device=device, generator=g, dtype=dtype) * DH**-0.5
    visible = torch.rand(B, T, N, device=device, generator=g) > 0.25 if masked else None
    grad = torch.randn(B, T // WINDOW, N, HEADS, DH, device=device, generator=g, dtype=dtype)
    return q, k, v, visible, grad


def pool_bytes(k: torch.Tensor, visible: torch.Tensor | None, grad: torch.Tensor) -> dict[str, int]:
    """The bytes the op must move (see the module docstring), by mode: ``fwd`` and ``fwd+bwd``."""
    elt, mask_bytes = k.element_size(), 0 if visible is None else visible.numel()
    fwd_bytes = (2 * k.numel() + grad.numel()) * elt + mask_bytes
    return {"fwd": fwd_bytes, "fwd+bwd": fwd_bytes + (4 * k.numel() + grad.numel()) * elt + mask_bytes}


def time_path(fn, q, k, v, visible, grad, mode: str, device: torch.device, quick: bool,
              graph: bool = False) -> dict:
    """``measure`` of one path (``graph``: replayed from a CUDA graph): forward under no_grad, or forward +
    backward to q, k, v."""
    qg, kg, vg = (t.detach().requires_grad_(mode != "fwd") for t in (q, k, v))

    def run():
        out = fn(qg, kg, vg, WINDOW, visible)
        return out if mode == "fwd" else torch.autograd.grad(out, (qg, kg, vg), grad)

    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
        return measure(run, device, reps=5 if quick else 20, warmup=1 if quick else 3, graph=graph)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    info = device_info(device) | {"N": N, "heads": HEADS, "Dh": DH, "window": WINDOW}
    info["copy_GBps"] = copy_bandwidth(device, nbytes=(256 if device.type == "cuda" else 32) * 2**20)
    paths = {"eager": temporal_attention_pool_reference, "sdpa": sdpa_pool}
    if device.type == "cuda" or not args.quick:  # compiling on a CPU smoke run costs more than it shows
        paths["compiled"] = torch.compile(temporal_attention_pool_reference)
    if device.type == "cuda":
        paths["triton"] = temporal_attention_pool_triton
    rows, errors = [], []
    for B, T, dtype, masked in cases(device, args.quick):
        q, k, v, visible, grad = pool_inputs(B, T, dtype, masked, device, torch.Generator(device=device).manual_seed(0))
        bytes_by_mode = pool_bytes(k, visible, grad)
        with torch.no_grad():  # every path must agree with the reference before its time means anything
            want = temporal_attention_pool_reference(q, k, v, WINDOW, visible).float()
            err = {}
            for name, fn in paths.items():
                try:
                    err[name] = (fn(q, k, v, WINDOW, visible).float() - want).abs().max().item()
                except Exception:  # the timing loop below records the error
                    pass
        shape = f"B{B} T{T} {str(dtype).removeprefix('torch.')}{' masked' if masked else ''}"
        for mode in ("fwd", "fwd+bwd"):
            time_one = functools.partial(time_path, q=q, k=k, v=v, visible=visible, grad=grad, mode=mode,
                                         device=device, quick=args.quick)
            for name, path, t, speedup in time_against_eager(paths, time_one, device, errors, f"{shape} {mode}"):
                gbps = bytes_by_mode[mode] / (t["ms"] * 1e-3) / 1e9
                rows.append({"case": f"{shape} {mode}", "shape": shape, "mode": mode, "path": path, **t,
                             "max_abs_err": err.get(name), "bytes": bytes_by_mode[mode], "GBps": gbps,
                             "frac_copy": gbps / info["copy_GBps"], "speedup_vs_eager": speedup})
                print(f"{shape:>26} {mode:>8} {path:>15}: {t['ms']:9.3f} ms {gbps:8.1f} GB/s "
                      f"({gbps / info['copy_GBps']:5.1%} of copy)" + ("" if speedup is None else f"  x{speedup:.2f}"))
        del k, v, q, grad, visible, time_one  # time_one holds them too
        if device.type == "cuda":
            torch.cuda.empty_cache()
        info["errors"] = errors  # written after each case: a timeout keeps what was measured
        write_results("temporal_pool", info, rows, args.out, label="path", group="case")
    for e in errors:
        print("error:", e)
    print(f"copy bandwidth {info['copy_GBps']:.1f} GB/s; wrote {args.out / 'temporal_pool.json'} and the plot")


if __name__ == "__main__":
    main()
