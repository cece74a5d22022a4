"""Forward + backward of the masked latent losses (``masked_l2_loss``, ``masked_jepa_loss``) at ViT-B recipe shapes:
the eager reference, ``torch.compile`` of it and, on CUDA, the Triton kernel (at D >= 768 also under candidate launch
settings); and I-JEPA's trainer pipeline (layer norm, gather, concatenation, smooth L1) against one
``masked_jepa_loss``. Bytes: ``frac_copy`` 3 row-passes, ``frac_copy_autograd`` 5 (benchmarks/README.md).

    python -m benchmarks.bench_masked_loss [--quick] [--device cuda|cpu] [--out DIR]
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.harness import Case, Cycling, cli, cold_copies, default_setting, run_cases, setting_text
from hjepa_fast.kernels import masked_loss as ml

# (B, M, N, D): image I-JEPA (196 tokens, ~75 % predicted) and video (1568 tokens) at the level widths, largest first
SHAPES = [(128, 1176, 1568, 768), (128, 784, 1568, 96), (256, 147, 196, 768), (128, 784, 1568, 192),
          (128, 1176, 1568, 384)]
QUICK_SHAPES = {"cpu": [(8, 147, 196, 96), (4, 147, 196, 384)], "cuda": [(64, 147, 196, 768), (128, 784, 1568, 96)]}
# I-JEPA's trainer at ViT-B/16 224 px: 128 images a GPU, 4 prediction masks of ~36 of the 196 tokens:
# (prediction rows B = 4 * 128, M, N, D, target batch)
IJEPA_TRAINER = {"full": (512, 36, 196, 768, 128), "quick": (32, 36, 196, 96, 8)}
# without the index range check, as the model calls them: the check is a host-device sync per call
OPS = {"l2": (functools.partial(ml.masked_l2_loss_reference, check_idx=False),
              functools.partial(ml.masked_l2_loss_triton, check_idx=False)),
       "ijepa": (functools.partial(ml.masked_jepa_loss_reference, check_idx=False),
                 functools.partial(ml.masked_jepa_loss_triton, check_idx=False))}


def loss_setting(elements: int, warps: int | None, tiles: int = 1, stages: int = 1, split: bool = False) -> dict:
    """A launch setting of the loss kernel (``masked_loss_launch``'s keywords)."""
    return {"tile_elements": elements, "warps": warps, "tiles": tiles, "stages": stages, "split_rows": split}


# timed beside the default at D >= 768 on CUDA: the sweep's likeliest candidates, inside the whole op
CANDIDATE_SETTINGS = [loss_setting(2048, None), loss_setting(2048, None, split=True), loss_setting(1024, 1),
                      loss_setting(1024, 2, 8, 3), loss_setting(1024, 1, 4, 2, split=True)]


def ijepa_trainer_loss(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """I-JEPA's loss as its trainer builds it; ``idx``: the mask blocks stacked mask-major, ``[blocks * B_t, K]``."""
    Bt, _, D = target.shape
    h = F.layer_norm(target.detach(), (D,))
    blocks = idx.view(-1, Bt, idx.shape[1])
    gathered = torch.cat([torch.gather(h, 1, block.unsqueeze(-1).repeat(1, 1, D)) for block in blocks])
    return F.smooth_l1_loss(pred, gathered)


def loss_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, g: torch.Generator,
                in_order: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``pred [B, M, D]``, ``target [B_t, N, D]``, ``idx [B, M]`` (distinct positions a row, in increasing
    order as mask generators give them, or shuffled) for (B, M, N, D, B_t)."""
    B, M, N, D, Bt = shape
    pred = torch.randn(B, M, D, device=device, dtype=dtype, generator=g)
    target = torch.randn(Bt, N, D, device=device, dtype=dtype, generator=g)
    idx = torch.rand(B, N, device=device, generator=g).argsort(1)[:, :M]
    return pred, target, (idx.sort(1).values if in_order else idx).contiguous()


def specs(device: torch.device, quick: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(op, (B, M, N, D, target batch)): both losses at each shape, the trainer's pipeline after the first."""
    shapes = QUICK_SHAPES[device.type] if quick else SHAPES
    out = [(op, (B, M, N, D, B)) for B, M, N, D in shapes for op in OPS]
    return [*out[:2], ("ijepa trainer", IJEPA_TRAINER["quick" if quick or device.type == "cpu" else "full"]), *out[2:]]


def under_setting(fn: Callable, setting: dict) -> Callable:
    def call(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
        return fn(pred, target, idx, launch=ml.masked_loss_launch(pred.shape, pred.dtype, pred.device, **setting))
    return call


def paths_of(op: str, D: int, device: torch.device) -> dict[str, Callable]:
    """Eager, compiled, on CUDA the Triton kernel (at D >= 768 also under each candidate setting)."""
    eager, triton = (ijepa_trainer_loss, OPS["ijepa"][1]) if op == "ijepa trainer" else OPS[op]
    paths = {"eager": eager, "compiled": torch.compile(eager, fullgraph=True, dynamic=False)}
    if device.type == "cuda":
        default = default_setting(ml.masked_loss_launch, CANDIDATE_SETTINGS[0])
        paths |= {"triton": triton} | {f"triton {setting_text(s, default)}": under_setting(triton, s)
                                        for s in (CANDIDATE_SETTINGS if D >= 768 else []) if s != default}
    return paths


def fwd_bwd(fn: Callable) -> Callable:
    return lambda pred, target, idx: torch.autograd.grad(fn(pred, target, idx), pred)


def input_copies(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """Seeded inputs, ``pred`` requiring its gradient, in as many copies as a cold timing needs."""
    B, M, N, D, Bt = shape
    g, read = torch.Generator(device=device).manual_seed(0), B * M * (2 * D * (torch.finfo(dtype).bits // 8) + 8)
    copies = [loss_inputs(shape, dtype, device, g) for _ in range(cold_copies(read, device))]
    return [(pred.requires_grad_(), target, idx) for pred, target, idx in copies]


def setup(spec: tuple[str, tuple[int, ...]], device: torch.device, quick: bool = False):
    op, (B, M, N, D, Bt) = spec
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    copies, size = input_copies((B, M, N, D, Bt), dtype, device), torch.finfo(dtype).bits // 8
    nbytes = B * M * (3 * D * size + 8)
    yield Case(f"{op} B{B} M{M} N{N} D{D}" + ("" if Bt == B else f" Bt{Bt}"),
               {name: Cycling(fwd_bwd(fn), copies) for name, fn in paths_of(op, D, device).items()},
               {"frac_copy": nbytes, "frac_copy_autograd": nbytes + 2 * B * M * D * size},
               {"op": op, "B": B, "M": M, "N": N, "D": D, "target_batch": Bt, "dtype": str(dtype)})


if __name__ == "__main__":
    run_cases("masked_loss", cli(__doc__).parse_args(), specs, setup)
