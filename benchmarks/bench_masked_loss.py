"""Forward + backward of the masked latent losses (``masked_l2_loss``, I-JEPA's ``masked_jepa_loss``) on
ViT-B recipe shapes: the eager reference, ``torch.compile`` of the reference and (CUDA only) the fused
Triton kernel.

Bytes counted (the minimum any implementation must move, forward + backward): one read of the ``B*M``
prediction rows and of the ``B*M`` gathered target rows, one read of ``idx`` and one write of the
prediction gradient: ``B*M*(D*(2*pred_bytes + target_bytes) + idx_bytes)``. GB/s = those bytes / time;
``frac_copy`` = GB/s over the copy bandwidth measured on the same device in the same run. The fused
kernel itself moves ``2*B*M*D*pred_bytes`` more: its backward scales the gradient written in the forward
by ``grad_output`` (one read, one write), so its ceiling on this metric is 3/5 of the copy bandwidth;
``frac_copy_autograd`` counts those bytes too (what any loss that is a drop-in under autograd moves).

Paths: ``eager`` (the reference), ``compiled`` (``torch.compile`` of it) and on CUDA ``triton`` (the fused
kernel), each timed as a caller sees it (``do_bench``: host launch work included where the device waits
for it); on CUDA each once more as ``<path> graph``: the same calls captured in a CUDA graph and replayed,
the device's time alone (speedups of those rows are against ``eager graph``).

On CPU (reference paths only) it runs one thread: on a shared machine two spinning OpenMP threads made the
medians swing 100-fold (*measured*).

``python -m benchmarks.bench_masked_loss [--quick] [--device cuda|cpu] [--out DIR]``
"""
from __future__ import annotations

import functools

import torch

from benchmarks.harness import copy_bandwidth, device_info, measure, parse_args, timings, write_results
from hjepa_fast.kernels import masked_loss as ml

# (B, M, N, D): image I-JEPA (196 tokens, ~75 % predicted) and video (1568 tokens) at the level widths
# (largest first: a run stopped at its time budget keeps the shapes measured so far)
SHAPES = [(128, 1176, 1568, 768), (128, 784, 1568, 96), (256, 147, 196, 768), (128, 784, 1568, 192),
          (128, 1176, 1568, 384)]
QUICK_SHAPES = {"cpu": [(8, 147, 196, 96), (4, 147, 196, 384)], "cuda": [(64, 147, 196, 768), (128, 784, 1568, 96)]}
# every path without the index range check (``check_idx=False``, as the model calls it): the check is one
# host-device sync per call, which would put the host's launch latency into every path's time
OPS = {
    "l2": (functools.partial(ml.masked_l2_loss_reference, check_idx=False),
           functools.partial(ml.masked_l2_loss_triton, check_idx=False)),
    "ijepa": (functools.partial(ml.masked_jepa_loss_reference, check_idx=False),
              functools.partial(ml.masked_jepa_loss_triton, check_idx=False)),
}


def _fwd_bwd(fn, pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
    def run():
        return torch.autograd.grad(fn(pred, target, idx), pred)
    return run


def min_bytes(B: int, M: int, D: int, pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> int:
    return B * M * (D * (2 * pred.element_size() + target.element_size()) + idx.element_size())


def row(op: str, path: str, shape: tuple[int, int, int, int], t: dict, nbytes: int, pred: torch.Tensor,
        copy_gbps: float, eager_ms: float | None) -> dict:
    """One result row: time, GB/s on the minimum bytes and the fractions of copy on them and on the bytes
    a drop-in loss moves under autograd (two more passes over the gradient)."""
    B, M, N, D = shape
    gbps = nbytes / (t["ms"] * 1e-3) / 1e9
    autograd_gbps = (nbytes + 2 * pred.numel() * pred.element_size()) / (t["ms"] * 1e-3) / 1e9
    return {"op": op, "path": path, "shape": f"{op} B{B} M{M} N{N} D{D}", "B": B, "M": M, "N": N, "D": D, **t,
            "gbps": gbps, "frac_copy": gbps / copy_gbps, "frac_copy_autograd": autograd_gbps / copy_gbps,
            "speedup_vs_eager": None if eager_ms is None else eager_ms / t["ms"]}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = QUICK_SHAPES[device.type] if args.quick else SHAPES
    info = device_info(device) | {"dtype": str(dtype), "copy_gbps": copy_bandwidth(device)}
    rows, errors = [], []
    for B, M, N, D in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        pred = torch.randn(B, M, D, device=device, dtype=dtype, generator=g).requires_grad_()
        target = torch.randn(B, N, D, device=device, dtype=dtype, generator=g)
        idx = torch.rand(B, N, device=device, generator=g).argsort(1)[:, :M].contiguous()  # distinct per sample
        nbytes = min_bytes(B, M, D, pred, target, idx)
        for op, (reference, triton_fn) in OPS.items():
            torch._dynamo.reset()  # one compilation per shape: 10 of them pass Dynamo's recompile limit (8)
            paths = {"eager": reference, "compiled": torch.compile(reference, fullgraph=True, dynamic=False)}
            if device.type == "cuda":
                paths["triton"] = triton_fn
            for graph in timings(device):
                eager_ms = None  # the speedups of each timing are against eager under the same timing
                for name, fn in paths.items():
                    path = f"{name} graph" if graph else name
                    try:
                        t = measure(_fwd_bwd(fn, pred, target, idx), device, reps=30, graph=graph)
                    except Exception as err:  # record and go on: one failing path must not hide the others
                        errors.append(f"{op} B{B} M{M} N{N} D{D} {path}: {type(err).__name__}: {str(err)[:200]}")
                        continue
                    eager_ms = t["ms"] if name == "eager" else eager_ms
                    rows.append(row(op, path, (B, M, N, D), t, nbytes, pred, info["copy_gbps"], eager_ms))
                    r = rows[-1]
                    print(f"{r['shape']:<34} {path:<14} {t['ms']:9.3f} ms {r['gbps']:8.1f} GB/s "
                          f"{r['frac_copy']:6.1%} of copy ({r['frac_copy_autograd']:6.1%} counting the autograd "
                          f"bytes)" + ("" if eager_ms is None else f"  x{r['speedup_vs_eager']:.2f} vs eager"))
            del paths
        del pred, target, idx
        info["errors"] = errors
        write_results("masked_loss", info, rows, args.out)  # after each shape: a timeout keeps what was measured
    for e in errors:
        print("error:", e)
    print(f"copy bandwidth {info['copy_gbps']:.1f} GB/s; wrote {args.out / 'masked_loss.json'} and the plot")


if __name__ == "__main__":
    main()
