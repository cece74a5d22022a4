"""Forward + backward of the masked latent losses (``masked_l2_loss``, I-JEPA's ``masked_jepa_loss``) on
ViT-B recipe shapes: the eager reference, ``torch.compile`` of the reference and (CUDA only) the fused
Triton kernel; and I-JEPA's own trainer pipeline (every target token layer-normalised, each mask gathered
with an expanded int64 index, the blocks concatenated, smooth L1) against one ``masked_jepa_loss`` call on
the un-gathered targets (a target batch dividing the prediction batch). Every row carries ``abs_err``, its
loss value's distance from the eager baseline's.

Bytes counted (the minimum any implementation must move, forward + backward): one read of the ``B*M``
prediction rows and of the ``B*M`` gathered target rows, one read of ``idx`` and one write of the
prediction gradient: ``B*M*(D*(2*pred_bytes + target_bytes) + idx_bytes)``. GB/s = those bytes / time;
``frac_copy`` = GB/s over the copy bandwidth measured on the same device in the same run. The fused
kernel itself moves ``2*B*M*D*pred_bytes`` more: its backward scales the gradient written in the forward
by ``grad_output`` (one read, one write), so its ceiling on this metric is 3/5 of the copy bandwidth;
``frac_copy_autograd`` counts those bytes too (what any loss that is a drop-in under autograd moves).

Paths: ``eager`` (the reference), ``compiled`` (``torch.compile`` of it) and on CUDA ``triton`` (the fused
kernel at its default launch setting), each timed as a caller sees it (``do_bench``: host launch work
included where the device waits for it); on CUDA each once more as ``<path> graph``: the same calls
captured in a CUDA graph and replayed, the device's time alone (speedups of those rows are against
``eager graph``). The timed calls take turns over copies of the inputs, enough that a graph's calls read
cold memory as the caller-timed ones do (``harness.cold_copies``: 7 copies at D 96, whose calls read ~39 MB
of inputs, less than an H200's 50 MB L2 cache). ``idx`` rows are random positions in
increasing order, as mask generators give them (``sweep_launch.loss_inputs``). At D >= 768 the kernel is
also timed under the sweep's other candidate launch settings (``triton 1024/2w x8 s3``: 1,024-element
tiles, 2 warps, 8 tiles per program, 3 pipelining stages; ``split``: rows in two power-of-two chunks; see
``setting_label``), so that one run both picks the default and measures it through autograd.

On CPU (reference paths only) it runs one thread: on a shared machine two spinning OpenMP threads made the
medians swing 100-fold (*measured*).

``python -m benchmarks.bench_masked_loss [--quick] [--device cuda|cpu] [--out DIR]``
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from benchmarks import sweep_launch
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
from benchmarks.sweep_launch import loss_input_bytes, loss_inputs, loss_setting
from hjepa_fast.kernels import masked_loss as ml

# (B, M, N, D): image I-JEPA (196 tokens, ~75 % predicted) and video (1568 tokens) at the level widths
# (largest first: a run stopped at its time budget keeps the shapes measured so far)
SHAPES = [(128, 1176, 1568, 768), (128, 784, 1568, 96), (256, 147, 196, 768), (128, 784, 1568, 192),
          (128, 1176, 1568, 384)]
QUICK_SHAPES = {"cpu": [(8, 147, 196, 96), (4, 147, 196, 384)], "cuda": [(64, 147, 196, 768), (128, 784, 1568, 96)]}
# I-JEPA's own trainer at ViT-B/16 224 px: 128 images per GPU, 4 prediction masks of ~36 of the 196 tokens,
# 1 context mask: (prediction rows B = 4 * 128, M, N, D, target batch)
IJEPA_TRAINER = {"full": (512, 36, 196, 768, 128), "quick": (32, 36, 196, 96, 8)}
# every path without the index range check (``check_idx=False``, as the model calls it): the check is one
# host-device sync per call, which would put the host's launch latency into every path's time
OPS = {
    "l2": (functools.partial(ml.masked_l2_loss_reference, check_idx=False),
           functools.partial(ml.masked_l2_loss_triton, check_idx=False)),
    "ijepa": (functools.partial(ml.masked_jepa_loss_reference, check_idx=False),
              functools.partial(ml.masked_jepa_loss_triton, check_idx=False)),
}

# the loss kernel's launch settings timed beside the default at D >= 768 (CUDA): the sweep's likeliest
# bare-kernel candidates (``benchmarks.sweep_launch``), here inside the whole op; (tile elements, warps,
# tiles per program, pipelining stages)
CANDIDATE_SETTINGS = [loss_setting(2048, None), loss_setting(2048, None, split=True), loss_setting(1024, 1),
                      loss_setting(1024, 2, 8, 3), loss_setting(1024, 1, 4, 2, split=True)]


class Case(NamedTuple):
    """One benchmarked loss at one shape: (B, M, N, D, target batch) and its eager baseline / Triton path."""

    op: str
    shape: tuple[int, int, int, int, int]
    eager: Callable
    triton: Callable


def ijepa_trainer_loss(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """I-JEPA's loss the way its trainer builds it (re-written here from its description): layer-normalise
    every target token, gather each mask's tokens with an int64 index expanded to ``[B_t, K, D]``,
    concatenate the mask blocks along the batch, smooth L1 over all elements. ``idx`` holds the blocks
    stacked mask-major, ``[n_blocks * B_t, K]``."""
    Bt, _, D = target.shape
    h = F.layer_norm(target.detach(), (D,))
    blocks = idx.view(-1, Bt, idx.shape[1])
    gathered = torch.cat([torch.gather(h, 1, block.unsqueeze(-1).repeat(1, 1, D)) for block in blocks])
    return F.smooth_l1_loss(pred, gathered)


def cases(device: torch.device, quick: bool) -> list[Case]:
    """The two losses at each recipe shape, the I-JEPA trainer's own pipeline against one call of
    ``masked_jepa_loss`` on its un-gathered targets second (each case compiles its baseline anew: a short
    time budget reaches the first few)."""
    shapes = QUICK_SHAPES[device.type] if quick else SHAPES
    out = [Case(op, (B, M, N, D, B), eager, triton) for B, M, N, D in shapes for op, (eager, triton) in OPS.items()]
    trainer_shape = IJEPA_TRAINER["quick" if quick or device.type == "cpu" else "full"]
    return [*out[:2], Case("ijepa trainer", trainer_shape, ijepa_trainer_loss, OPS["ijepa"][1]), *out[2:]]


def loss_errors(paths: dict[str, Callable], pred: torch.Tensor, target: torch.Tensor,
                idx: torch.Tensor) -> dict[str, float]:
    """Each path's loss value against the eager baseline's (a time means something only for a path that
    agrees); grad mode stays on, so compiled paths trace the graph they are timed with. A path that fails
    is left out (its timing records the error)."""
    want = paths["eager"](pred, target, idx).detach().float()
    err = {}
    for name, fn in paths.items():
        try:
            err[name] = (fn(pred, target, idx).detach().float() - want).abs().item()
        except Exception:
            pass
    return err


def default_setting() -> dict[str, object]:
    """The loss kernel's default launch setting (the keywords of ``masked_loss_launch`` that
    ``CANDIDATE_SETTINGS`` vary)."""
    return sweep_launch.default_setting(ml.masked_loss_launch, CANDIDATE_SETTINGS[0])


def setting_label(setting: dict[str, object]) -> str:
    """``1024/2w x8 s3 split``: 1,024-element tiles, 2 warps, 8 tiles per program, 3 pipelining stages, rows
    in two chunks."""
    elements, warps, tiles, stages, split = setting.values()
    extras = ("" if tiles == 1 else f" x{tiles}") + ("" if stages == 1 else f" s{stages}") + (" split" if split else "")
    return f"{elements}/{warps or 'auto '}w{extras}"


def under_setting(fn: Callable, setting: dict[str, object]) -> Callable:
    """``fn(pred, target, idx)`` launching the loss kernel under ``setting``: ``launch=`` the settings of
    ``masked_loss_launch`` with those keywords for pred's shape."""
    def call(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
        return fn(pred, target, idx, launch=ml.masked_loss_launch(pred.shape, pred.dtype, pred.device, **setting))
    return call


def paths_of(case: Case, device: torch.device) -> dict[str, Callable]:
    """The paths timed for ``case``: eager, compiled and on CUDA the Triton kernel, at D >= 768 also under each
    candidate launch setting other than the default (``triton <setting_label>``)."""
    paths = {"eager": case.eager, "compiled": torch.compile(case.eager, fullgraph=True, dynamic=False)}
    if device.type == "cuda":
        paths["triton"] = case.triton
        for setting in CANDIDATE_SETTINGS if case.shape[3] >= 768 else []:
            if setting != default_setting():
                paths[f"triton {setting_label(setting)}"] = under_setting(case.triton, setting)
    return paths


def time_paths(case: Case, paths: dict[str, Callable], inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
               device: torch.device, copy_gbps: float, errors: list[str]) -> list[dict]:
    """One row per path and timing (on CUDA also ``<path> graph``), each with its loss value's distance from
    eager (``abs_err``). ``inputs``: copies of ``(pred, target, idx)``, the timed calls cycling through them
    (``harness.Cycling``: a CUDA graph's calls then read cold memory). A path that fails is appended to
    ``errors`` and left out: it must not hide the others."""
    B, M, N, D, Bt = case.shape
    pred, target, idx = inputs[0]
    nbytes = min_bytes(B, M, D, pred, target, idx)
    err = loss_errors(paths, pred, target, idx)
    rows = []
    for name, path, t, speedup in time_against_eager(
            paths, lambda fn, graph: measure(Cycling(_fwd_bwd(fn), inputs), device, reps=30, graph=graph), device,
            errors, label(case)):
        r = row(case, path, t, nbytes, pred, copy_gbps, speedup) | {"abs_err": err.get(name)}
        rows.append(r)
        print(f"{r['shape']:<40} {path:<20} {t['ms']:9.3f} ms {r['gbps']:8.1f} GB/s "
              f"{r['frac_copy']:6.1%} of copy ({r['frac_copy_autograd']:6.1%} counting the autograd "
              f"bytes)" + ("" if speedup is None else f"  x{speedup:.2f} vs eager"))
    return rows


def _fwd_bwd(fn: Callable) -> Callable:
    """A forward + backward of the loss ``fn`` on given inputs: the gradient wrt ``pred``."""
    def run(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
        return torch.autograd.grad(fn(pred, target, idx), pred)
    return run


def loss_inputs_copies(case: Case, dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """Seeded ``(pred, target, idx)`` for ``case``, ``pred`` requiring its gradient, in as many copies as a cold
    timing needs (``harness.cold_copies`` on what a call reads of them: the prediction and gathered target
    rows and ``idx``)."""
    B, M, N, D, Bt = case.shape
    g = torch.Generator(device=device).manual_seed(0)
    read = loss_input_bytes(B, M, D, torch.finfo(dtype).bits // 8)
    copies = [loss_inputs(case.shape, dtype, device, g) for _ in range(cold_copies(read, device))]
    return [(pred.requires_grad_(), target, idx) for pred, target, idx in copies]


def autograd_bytes(B: int, M: int, D: int, element_size: int) -> int:
    """What a drop-in loss moves under autograd, all rows in one dtype and an int64 ``idx``: the prediction and
    target rows read and the gradient written, then read and scaled in the backward (5 row-passes)."""
    return B * M * (5 * D * element_size + 8)


def min_bytes(B: int, M: int, D: int, pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> int:
    return B * M * (D * (2 * pred.element_size() + target.element_size()) + idx.element_size())


def row(case: Case, path: str, t: dict, nbytes: int, pred: torch.Tensor, copy_gbps: float,
        speedup_vs_eager: float | None) -> dict:
    """One result row: time, GB/s on the minimum bytes and the fractions of copy on them and on the bytes
    a drop-in loss moves under autograd (two more passes over the gradient)."""
    B, M, N, D, Bt = case.shape
    gbps = nbytes / (t["ms"] * 1e-3) / 1e9
    autograd_gbps = (nbytes + 2 * pred.numel() * pred.element_size()) / (t["ms"] * 1e-3) / 1e9
    return {"op": case.op, "path": path, "shape": label(case), "B": B, "M": M, "N": N, "D": D, "target_batch": Bt,
            **t, "gbps": gbps, "frac_copy": gbps / copy_gbps, "frac_copy_autograd": autograd_gbps / copy_gbps,
            "speedup_vs_eager": speedup_vs_eager}


def label(case: Case) -> str:
    B, M, N, D, Bt = case.shape
    return f"{case.op} B{B} M{M} N{N} D{D}" + ("" if Bt == B else f" Bt{Bt}")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    info = device_info(device) | {"dtype": str(dtype), "copy_gbps": copy_bandwidth(device)}
    rows, errors = [], []
    info["triton_launch"] = default_setting()  # what the plain ``triton`` rows ran with
    for case in cases(device, args.quick):
        inputs = loss_inputs_copies(case, dtype, device)
        torch._dynamo.reset()  # one compilation per case: 10 of them pass Dynamo's recompile limit (8)
        rows += time_paths(case, paths_of(case, device), inputs, device, info["copy_gbps"], errors)
        del inputs
        info["errors"] = errors
        write_results("masked_loss", info, rows, args.out)  # after each case: a timeout keeps what was measured
    for e in errors:
        print("error:", e)
    print(f"copy bandwidth {info['copy_gbps']:.1f} GB/s; wrote {args.out / 'masked_loss.json'} and the plot")


if __name__ == "__main__":
    main()
