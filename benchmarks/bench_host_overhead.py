"""Host time of the Triton ops: one forward + backward on tiny tensors through each door every op has (the
``torch.library.custom_op`` that ``torch.compile`` traces, and the public ``*_triton`` function with its
``autograd.Function``), the public function also with the backward on the calling thread
(``torch.autograd.set_multithreading_enabled(False)``: on CUDA the autograd engine otherwise hands the backward to
a device thread), and an ``autograd floor``: one torch multiply, both ways. The doors are timed in turn, 10 rounds
(--quick: 5) of 100 calls; on CPU the kernel launches are stubbed out, on CUDA they are real.

    python -m benchmarks.bench_host_overhead [--out DIR] [--quick] [--device cpu|cuda]
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from unittest import mock

import torch

from benchmarks.harness import Case, cli, run_cases
from hjepa_fast.kernels import masked_loss as ml
from hjepa_fast.kernels import temporal_pool as tp

CALLING_THREAD = "public function, calling thread"


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def doors(device: torch.device) -> dict[str, dict[str, Callable[[], object]]]:
    """op -> door -> one forward + backward (the floor first: a time limit keeps what the others are read against)."""
    pred, target = torch.randn(2, 3, 8, device=device, requires_grad=True), torch.randn(2, 5, 8, device=device)
    idx = torch.randint(0, 5, (2, 3), device=device)
    q = torch.randn(2, 4, device=device, requires_grad=True)
    k, v = (torch.randn(1, 4, 3, 2, 4, device=device, requires_grad=True) for _ in range(2))
    pooled_grad = torch.randn(1, 1, 3, 2, 4, device=device)
    loss_op = lambda: torch.autograd.grad(ml._masked_latent_loss_op(pred, target, idx, ml._L2, False, 1.0, True)[0],
                                          pred)
    pool_op = lambda: torch.autograd.grad(tp._pool_op(q, k, v, 4, None), (q, k, v), pooled_grad)
    loss = lambda: torch.autograd.grad(ml.masked_l2_loss_triton(pred, target, idx, check_idx=False), pred)
    pool = lambda: torch.autograd.grad(tp.temporal_attention_pool_triton(q, k, v, 4), (q, k, v), pooled_grad)
    multiply = lambda: torch.autograd.grad((pred * 2.0).sum(), pred)
    return {"autograd floor": {"torch multiply": multiply,
                               "torch multiply, calling thread": on_calling_thread(multiply)},
            "masked_l2_loss": {"custom op": loss_op, "public function": loss, CALLING_THREAD: on_calling_thread(loss)},
            "temporal_attention_pool": {"custom op": pool_op, "public function": pool,
                                        CALLING_THREAD: on_calling_thread(pool)}}


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


def setup(op: str, device: torch.device, quick: bool = False):
    with stubbed_launches() if device.type == "cpu" else contextlib.nullcontext():
        yield Case(op, doors(device)[op], fields={"launches": "real" if device.type == "cuda" else "stubbed"},
                   compare=False)


if __name__ == "__main__":
    args = cli(__doc__).parse_args()
    run_cases("host_overhead", args, lambda device, quick: list(doors(device)), setup, wall=True, calls=100,
              reps=5 if args.quick else 10)
