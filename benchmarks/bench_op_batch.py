"""The Triton ops through autograd as the batch grows (CUDA only): the masked L2 loss at ViT-B width (M 1176,
N 1568, D 768) and the temporal pooling at level 1 -> 2 (T 32, bf16), forward + backward, each batch timed as
a caller sees it (``triton``: ``do_bench``) and replayed from a CUDA graph (``triton graph``: the device's
time alone). Their difference is the per-call cost the device waits for (host work, the autograd engine's
hand-off); as the batch grows the device time grows and that cost does not, so the rows show from which
batch a caller sees the kernels' rate. In the H200 runs the microbenchmarks' shapes sat ~0.3 ms above their
bare kernels: at those batches the gap is most of a call.

Bytes as the op benchmarks count them: the loss's 5 row-passes under autograd (``frac_copy`` here is
``bench_masked_loss``'s ``frac_copy_autograd``), the pooling's forward and backward reads and writes. Graph
timings cycle through enough copies of the inputs to read cold memory (``harness.cold_copies``).

``python -m benchmarks.bench_op_batch [--quick] [--out DIR]``
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.bench_masked_loss import Case, autograd_bytes, loss_inputs_copies
from benchmarks.bench_temporal_pool import WINDOW, pool_bytes, pool_inputs
from benchmarks.harness import (
    Cycling,
    cold_copies,
    copy_bandwidth,
    device_info,
    measure,
    parse_args,
    time_against_eager,
    write_results,
)
from hjepa_fast.kernels.masked_loss import masked_l2_loss_triton
from hjepa_fast.kernels.temporal_pool import temporal_attention_pool_triton

LOSS_SHAPE, POOL_FRAMES = (1176, 1568, 768), 32  # (M, N, D) of the loss; T of the pooling
BATCHES = {"masked_l2_loss": [16, 32, 64, 128, 256, 512], "temporal_attention_pool": [8, 16, 32, 64, 128]}
QUICK_BATCHES = {"masked_l2_loss": [4, 16], "temporal_attention_pool": [2, 8]}


def loss_call(B: int, device: torch.device) -> tuple[Callable[[], object], int]:
    """A forward + backward of the L2 loss at batch ``B`` (bf16, idx in increasing order, no index check),
    cycling through cold copies of its inputs; and the bytes one call moves under autograd."""
    M, N, D = LOSS_SHAPE
    copies = loss_inputs_copies(Case("l2", (B, M, N, D, B), None, None), torch.bfloat16, device)

    def fwd_bwd(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
        return torch.autograd.grad(masked_l2_loss_triton(pred, target, idx, check_idx=False), pred)
    return Cycling(fwd_bwd, copies), autograd_bytes(B, M, D, 2)


def pool_call(B: int, device: torch.device) -> tuple[Callable[[], object], int]:
    """A forward + backward of the pooling at batch ``B`` (bf16, no mask), cycling through cold copies of its
    inputs; and the bytes one call moves."""
    g = torch.Generator(device=device).manual_seed(0)

    def inputs() -> tuple[torch.Tensor, ...]:
        q, k, v, _, grad = pool_inputs(B, POOL_FRAMES, torch.bfloat16, False, device, g)
        return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad

    first = inputs()
    read = sum(t.numel() * t.element_size() for t in first[1:])  # k, v and the output gradient
    copies = [first, *(inputs() for _ in range(cold_copies(read, device) - 1))]

    def fwd_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor):
        return torch.autograd.grad(temporal_attention_pool_triton(q, k, v, WINDOW), (q, k, v), grad)
    return Cycling(fwd_bwd, copies), pool_bytes(first[1], None, first[3])["fwd+bwd"]


CALLS = {"masked_l2_loss": loss_call, "temporal_attention_pool": pool_call}


def time_batch(make_call: Callable[[int, torch.device], tuple[Callable[[], object], int]], B: int,
               device: torch.device, errors: list[str], where: str) -> tuple[dict[str, dict], int]:
    """The call ``make_call`` builds at batch ``B``, timed by path: ``triton`` as a caller sees it and, on
    CUDA, ``triton graph`` (``harness.time_against_eager``: a timing that fails goes to ``errors`` after
    ``where``, the other is kept); and the call's bytes. Its inputs are freed on return."""
    call, nbytes = make_call(B, device)
    timed = time_against_eager({"triton": call}, lambda fn, graph: measure(fn, device, graph=graph), device,
                               errors, where)
    return {path: t for _, path, t, _ in timed}, nbytes


def gap_rows(op: str, B: int, times: dict[str, dict], nbytes: int, copy_gbps: float) -> list[dict]:
    """One row per timed path (``triton``, ``triton graph``) of ``op`` at batch ``B``; each carries ``gap_ms``,
    the caller's time minus the graph's when both were measured."""
    gap = times["triton"]["ms"] - times["triton graph"]["ms"] if len(times) == 2 else None
    rows = []
    for path, t in times.items():
        gbps = nbytes / (t["ms"] * 1e-3) / 1e9
        rows.append({"op": op, "B": B, "shape": f"{op} B{B}", "path": path, **t, "gbps": gbps,
                     "frac_copy": gbps / copy_gbps, "gap_ms": gap})
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    info = device_info(device)
    if device.type != "cuda":
        print("bench_op_batch times the Triton kernels through autograd: it needs CUDA; skipped")
        write_results("op_batch", info | {"skipped": ["needs CUDA"]}, [], args.out)
        return
    info["copy_gbps"] = copy_bandwidth(device)
    rows, info["errors"] = [], []
    for op, make_call in CALLS.items():
        for B in (QUICK_BATCHES if args.quick else BATCHES)[op]:
            try:
                times, nbytes = time_batch(make_call, B, device, info["errors"], f"{op} B{B}")
                new_rows = gap_rows(op, B, times, nbytes, info["copy_gbps"])
            except Exception as err:  # out of memory at the largest batch, say: the other rows still count
                info["errors"].append(f"{op} B{B}: {type(err).__name__}: {str(err)[:200]}")
                print("error:", info["errors"][-1])
                new_rows = []
            finally:
                torch.cuda.empty_cache()
            rows += new_rows
            for r in new_rows:
                gap = "" if r["gap_ms"] is None else f"  gap {r['gap_ms']:.3f} ms"
                print(f"{r['shape']:<32} {r['path']:<13} {r['ms']:8.3f} ms {r['gbps']:8.1f} GB/s "
                      f"{r['frac_copy']:6.1%} of copy{gap}")
            write_results("op_batch", info, rows, args.out)  # after each batch: a time limit keeps these
    for e in info["errors"]:
        print("error:", e)


if __name__ == "__main__":
    main()
