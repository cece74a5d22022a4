"""Host time of the Triton ops: what one forward + backward costs the CPU, through each of the two doors
every op has (``torch.library.custom_op``, which ``torch.compile`` traces, and the public ``*_triton``
function eager code calls, which takes an ``autograd.Function``). On a GPU the device waits for this time
whenever the op's kernels are shorter than it: in the H200 runs a loss forward + backward at a shape whose
kernels take ~25 us cost a caller ~0.55-0.65 ms (D 96 rows), and the large shapes ~0.3 ms more than their
kernels.

Tiny tensors, the doors timed round-robin so that a shared machine's load hits them alike. On CPU the
kernel launches are stubbed out (the interpreter's launch is not Triton's); on CUDA they are real, and
each round ends with a synchronisation: with kernels this small the time per call is the host's.

Two more rows tell where such a gap comes from: the public function with the backward run on the calling
thread (``torch.autograd.set_multithreading_enabled(False)``; on CUDA the autograd engine otherwise hands
the backward to a device thread and waits for it: a gap any op pays, once per backward call, not per op),
and an ``autograd floor``: a forward + backward of one torch multiply, the least any op costs the host,
both ways. On CPU the engine keeps the backward on the calling thread anyway.

``python -m benchmarks.bench_host_overhead [--out DIR] [--rounds N] [--quick] [--device cpu|cuda]``
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch

from benchmarks.harness import device_info, parser, write_results
from hjepa_fast.kernels import masked_loss as ml
from hjepa_fast.kernels import temporal_pool as tp


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


CALLING_THREAD = "public function, calling thread"  # the door that keeps the backward on the calling thread


def cases(device: torch.device) -> dict[str, dict[str, Callable[[], object]]]:
    """op -> door -> one forward + backward."""
    pred, target = torch.randn(2, 3, 8, device=device, requires_grad=True), torch.randn(2, 5, 8, device=device)
    idx = torch.randint(0, 5, (2, 3), device=device)
    q = torch.randn(2, 4, device=device, requires_grad=True)
    k, v = (torch.randn(1, 4, 3, 2, 4, device=device, requires_grad=True) for _ in range(2))
    pooled_grad = torch.randn(1, 1, 3, 2, 4, device=device)

    def loss_op():
        return torch.autograd.grad(ml._masked_latent_loss_op(pred, target, idx, ml._L2, False, 1.0, True)[0], pred)

    def pool_op():
        return torch.autograd.grad(tp._pool_op(q, k, v, 4, None), (q, k, v), pooled_grad)

    def loss_function():
        return torch.autograd.grad(ml.masked_l2_loss_triton(pred, target, idx, check_idx=False), pred)

    def pool_function():
        return torch.autograd.grad(tp.temporal_attention_pool_triton(q, k, v, 4), (q, k, v), pooled_grad)

    def multiply():
        return torch.autograd.grad((pred * 2.0).sum(), pred)

    return {  # the floor first: a time limit that stops the run keeps the rows the others are read against
        "autograd floor": {"torch multiply": multiply, "torch multiply, calling thread": on_calling_thread(multiply)},
        "masked_l2_loss": {"custom op": loss_op, "public function": loss_function,
                           CALLING_THREAD: on_calling_thread(loss_function)},
        "temporal_attention_pool": {"custom op": pool_op, "public function": pool_function,
                                    CALLING_THREAD: on_calling_thread(pool_function)},
    }


def on_calling_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the autograd engine running the backward on the calling thread."""
    def call():
        with torch.autograd.set_multithreading_enabled(False):
            return fn()
    return call


def stubbed_launches() -> contextlib.ExitStack:
    """Every kernel of the two ops replaced by a no-op for the duration (CPU runs)."""
    stack = contextlib.ExitStack()
    for module, name in ((ml, "_masked_loss_fwd_kernel"), (ml, "_scale_kernel"), (tp, "_pool_fwd_kernel"),
                         (tp, "_pool_bwd_kernel")):
        stack.enter_context(mock.patch.object(module, name, _NoLaunch()))
    return stack


def time_doors(doors: dict[str, Callable[[], object]], rounds: int, calls: int,
               device: torch.device) -> dict[str, list[float]]:
    """Milliseconds per call of each door, one value per round, the doors interleaved."""
    times: dict[str, list[float]] = {door: [] for door in doors}
    for fn in doors.values():  # first calls compile kernels / warm caches
        fn()
    for _ in range(rounds):
        for door, fn in doors.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[door].append((time.perf_counter() - start) / calls * 1e3)
    return times


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=10, help="rounds of 100 calls per door (--quick: 5)")
    args = cli.parse_args()
    device = torch.device(args.device)
    rounds = 5 if args.quick else args.rounds
    if device.type == "cpu":
        torch.set_num_threads(1)
    info = device_info(device) | {"launches": "real" if device.type == "cuda" else "stubbed"}
    rows = []
    with stubbed_launches() if device.type == "cpu" else contextlib.nullcontext():
        for op, doors in cases(device).items():
            times = time_doors(doors, rounds, 100, device)
            base = statistics.median(next(iter(times.values())))  # speedups against the op's first door
            for door, ts in times.items():
                q25, _, q75 = statistics.quantiles(ts, n=4)
                ms = statistics.median(ts)
                rows.append({"shape": op, "path": door, "ms": ms, "ms_q25": q25, "ms_q75": q75,
                             "speedup": base / ms})
                print(f"{op:<24} {door:<32} {ms * 1e3:7.1f} us host per forward + backward  x{base / ms:.2f}"
                      f" ({info['launches']} launches)")
            write_results("host_overhead", info, rows, args.out)  # after each op: a time limit keeps these


if __name__ == "__main__":
    main()
