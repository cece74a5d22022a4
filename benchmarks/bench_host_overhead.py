"""Host time of the Triton ops, with the kernel launches stubbed out: what a forward + backward costs the
CPU before any GPU work, through each of the two doors every op has (``torch.library.custom_op``, which
``torch.compile`` traces, and the ``autograd.Function`` that eager calls take). On a GPU the device waits
for this time whenever the op's kernels are shorter than it (the H200 runs measured ~0.3 ms of such gaps
per forward + backward at the benchmark shapes).

Tiny CPU tensors, one thread, the doors timed round-robin so that a shared machine's load hits them alike.

``python -m benchmarks.bench_host_overhead [--out DIR] [--rounds N] [--quick]`` (``--device`` is accepted and
ignored: this runs on the CPU)
"""
from __future__ import annotations

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


def cases() -> dict[str, dict[str, Callable[[], object]]]:
    """op -> door -> one forward + backward."""
    pred, target = torch.randn(2, 3, 8, requires_grad=True), torch.randn(2, 5, 8)
    idx = torch.randint(0, 5, (2, 3))
    q = torch.randn(2, 4, requires_grad=True)
    k, v = (torch.randn(1, 4, 3, 2, 4, requires_grad=True) for _ in range(2))

    def loss_op():
        return torch.autograd.grad(ml._masked_latent_loss_op(pred, target, idx, ml._L2, False, 1.0, True)[0], pred)

    def pool_op():
        return torch.autograd.grad(tp._pool_op(q, k, v, 4, None).sum(), (q, k, v))

    return {
        "masked_l2_loss": {"custom op": loss_op,
                           "autograd.Function": lambda: torch.autograd.grad(
                               ml._MaskedLatentLoss.apply(pred, target, idx, ml._L2, False, 1.0), pred)},
        "temporal_attention_pool": {"custom op": pool_op,
                                    "autograd.Function": lambda: torch.autograd.grad(
                                        tp._Pool.apply(q, k, v, 4, None).sum(), (q, k, v))},
    }


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--rounds", type=int, default=20, help="rounds of 200 calls per door (--quick: 5)")
    args = cli.parse_args()
    rounds = 5 if args.quick else args.rounds
    torch.set_num_threads(1)
    rows = []
    stubs = [mock.patch.object(ml, "_masked_loss_fwd_kernel", _NoLaunch()),
             mock.patch.object(tp, "_pool_fwd_kernel", _NoLaunch()),
             mock.patch.object(tp, "_pool_bwd_kernel", _NoLaunch())]
    for stub in stubs:
        stub.start()
    try:
        for op, doors in cases().items():
            times: dict[str, list[float]] = {door: [] for door in doors}
            for _ in range(rounds):
                for door, fn in doors.items():
                    start = time.perf_counter()
                    for _ in range(200):
                        fn()
                    times[door].append((time.perf_counter() - start) / 200 * 1e3)
            base = statistics.median(times["custom op"])
            for door, ts in times.items():
                q25, _, q75 = statistics.quantiles(ts, n=4)
                ms = statistics.median(ts)
                rows.append({"shape": op, "path": door, "ms": ms, "ms_q25": q25, "ms_q75": q75,
                             "speedup": base / ms})
                print(f"{op:<24} {door:<18} {ms * 1e3:7.1f} us host per forward + backward  x{base / ms:.2f}")
    finally:
        for stub in stubs:
            stub.stop()
    write_results("host_overhead", device_info(torch.device("cpu")), rows, args.out)


if __name__ == "__main__":
    main()
