"""What a caller of the Triton ops pays beyond the kernels (benchmarks/README.md, "Host time"). By default
(``host_overhead``) one forward + backward on tiny tensors through each door of each op (the custom op that
``torch.compile`` traces; the public ``*_triton`` function, also with the backward on the calling thread) and an
``autograd floor`` (a torch multiply), 10 rounds (--quick: 5) of 100 calls, CPU launches stubbed out.
``--batches`` (``op_batch``, CUDA): the loss at ViT-B width and the pooling (T 32), bf16, forward + backward as the
batch grows (``cases.yaml``), as a caller sees them and from a CUDA graph (``gap_ms``: the cost per call)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from unittest import mock

import torch

from benchmarks.bench_masked_loss import OPS, fwd_bwd, input_copies
from benchmarks.bench_temporal_pool import pool_bytes, pool_call, pool_copies
from benchmarks.harness import CASES, Case, cli, run_cases
from hjepa_fast.kernels import masked_loss as ml
from hjepa_fast.kernels import temporal_pool as tp

CALLING_THREAD = "public function, calling thread"


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def on_calling_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the autograd engine running the backward on the calling thread."""
    def call():
        with torch.autograd.set_multithreading_enabled(False):
            return fn()
    return call


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


def stubbed_launches() -> contextlib.ExitStack:
    """Every kernel of the two ops replaced by a no-op for the duration (CPU runs)."""
    stack = contextlib.ExitStack()
    for module, name in ((ml, "_masked_loss_fwd_kernel"), (ml, "_scale_kernel"), (tp, "_pool_fwd_kernel"),
                         (tp, "_pool_bwd_kernel")):
        stack.enter_context(mock.patch.object(module, name, _NoLaunch()))
    return stack


def setup(op: str, device: torch.device, quick: bool = False):
    """The doors of ``op`` (host_overhead)."""
    with stubbed_launches() if device.type == "cpu" else contextlib.nullcontext():
        yield Case(op, doors(device)[op], fields={"launches": "real" if device.type == "cuda" else "stubbed"},
                   compare=False)


def batch_specs(device: torch.device, quick: bool) -> list[tuple[str, int]]:
    batches = CASES["op_batch"]["quick_batches" if quick else "batches"]
    return [(op, B) for op, sizes in batches.items() for B in sizes]


def batch_setup(spec: tuple[str, int], device: torch.device, quick: bool = False):
    """One op's forward + backward through its public Triton function at one batch (op_batch)."""
    (op, B), cases, bf16 = spec, CASES["op_batch"], torch.bfloat16
    (M, N, D), T = cases["loss_shape"], cases["pool_frames"]
    if op == "masked_l2_loss":
        call, copies, nbytes = fwd_bwd(OPS["l2"][1]), input_copies((B, M, N, D), bf16, device), B * M * (10 * D + 8)
    else:
        call, copies = pool_call(tp.temporal_attention_pool_triton, "fwd+bwd"), pool_copies(B, T, bf16, False, device)
        nbytes = pool_bytes(B, T, 2, False)["fwd+bwd"]
    yield Case(f"{op} B{B}", {"triton": call}, {"frac_copy": nbytes}, {"op": op, "B": B}, inputs=copies)


if __name__ == "__main__":
    parser = cli(__doc__)
    parser.add_argument("--batches", action="store_true", help="op_batch: caller against device time by batch")
    args = parser.parse_args()
    if args.batches:
        run_cases("op_batch", args, batch_specs, batch_setup, cuda_only=True)
    else:
        run_cases("host_overhead", args, lambda device, quick: list(doors(device)), setup, wall=True, calls=100,
                  reps=5 if args.quick else 10)
