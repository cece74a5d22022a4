"""Forward + backward of the masked latent losses (``masked_l2_loss``, ``masked_jepa_loss``) at ViT-B recipe shapes
(``cases.yaml``): the eager reference, ``torch.compile`` of it and, on CUDA, the Triton kernel (at D >= 768 also
under candidate launch settings). Bytes: ``frac_copy`` 3 row-passes, ``frac_copy_autograd`` 5 (benchmarks/README.md)."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from benchmarks.harness import CASES, Case, cli, launch_settings, run_cases, seeded_copies, setting_text
from hjepa_fast.kernels import masked_loss as ml

# without the index range check, as the model calls them: the check is a host-device sync per call
OPS = {"l2": (functools.partial(ml.masked_l2_loss_reference, check_idx=False),
              functools.partial(ml.masked_l2_loss_triton, check_idx=False)),
       "ijepa": (functools.partial(ml.masked_jepa_loss_reference, check_idx=False),
                 functools.partial(ml.masked_jepa_loss_triton, check_idx=False))}
# the default first (``masked_loss_launch``'s), then the candidates
CANDIDATE_SETTINGS = launch_settings(ml.masked_loss_launch, [{}, *CASES["masked_loss"]["candidates"]])


def loss_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, g: torch.Generator,
                in_order: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``pred [B, M, D]``, ``target [B, N, D]``, ``idx [B, M]`` (distinct positions a row, in increasing
    order as mask generators give them, or shuffled) for (B, M, N, D)."""
    B, M, N, D = shape
    pred = torch.randn(B, M, D, device=device, dtype=dtype, generator=g)
    target = torch.randn(B, N, D, device=device, dtype=dtype, generator=g)
    idx = torch.rand(B, N, device=device, generator=g).argsort(1)[:, :M]
    return pred, target, (idx.sort(1).values if in_order else idx).contiguous()


def input_copies(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """Seeded inputs, ``pred`` requiring its gradient, in as many copies as a cold timing needs."""
    B, M, N, D = shape
    return [(pred.requires_grad_(), target, idx) for pred, target, idx in seeded_copies(
        lambda g: loss_inputs(shape, dtype, device, g), B * M * (2 * D * dtype.itemsize + 8), device)]


def specs(device: torch.device, quick: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(op, (B, M, N, D)): both losses at each shape."""
    cases = CASES["masked_loss"]
    return [(op, tuple(shape)) for shape in (cases["quick_shapes"][device.type] if quick else cases["shapes"])
            for op in OPS]


def paths_of(op: str, D: int, device: torch.device) -> dict[str, Callable]:
    """Eager, compiled, on CUDA the Triton kernel (at D >= 768 also under each candidate setting)."""
    eager, triton = OPS[op]
    paths = {"eager": eager, "compiled": torch.compile(eager, fullgraph=True, dynamic=False)}
    if device.type == "cuda":
        default = CANDIDATE_SETTINGS[0]

        def under(setting: dict) -> Callable:
            return lambda pred, target, idx: triton(pred, target, idx, launch=ml.masked_loss_launch(
                pred.shape, pred.dtype, pred.device, **setting))
        paths |= {"triton": triton} | {f"triton {setting_text(s, default)}": under(s)
                                        for s in (CANDIDATE_SETTINGS if D >= 768 else []) if s != default}
    return paths


def fwd_bwd(fn: Callable) -> Callable:
    return lambda pred, target, idx: torch.autograd.grad(fn(pred, target, idx), pred)


def setup(spec: tuple[str, tuple[int, ...]], device: torch.device, quick: bool = False):
    op, (B, M, N, D) = spec
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    nbytes = B * M * (3 * D * dtype.itemsize + 8)
    yield Case(f"{op} B{B} M{M} N{N} D{D}", {name: fwd_bwd(fn) for name, fn in paths_of(op, D, device).items()},
               {"frac_copy": nbytes, "frac_copy_autograd": nbytes + 2 * B * M * D * dtype.itemsize},
               {"op": op, "B": B, "M": M, "N": N, "D": D, "dtype": str(dtype)},
               inputs=input_copies((B, M, N, D), dtype, device))


if __name__ == "__main__":
    run_cases("masked_loss", cli(__doc__).parse_args(), specs, setup)
