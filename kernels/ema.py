"""Multi-level EMA update of target encoders: ``target <- tau * target + (1 - tau) * source``.

Groups are levels: each group of (target, source) tensor pairs moves with its own ``tau``.
``torch.lerp`` is exact at both ends (tau=1 keeps the target bit for bit, tau=0 copies the source).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

TensorGroups = Sequence[Sequence[torch.Tensor]]


def _as_groups(
    targets: TensorGroups | Sequence[torch.Tensor], sources: TensorGroups | Sequence[torch.Tensor],
    taus: float | Sequence[float],
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], list[float]]:
    """Accept groups or flat lists, a float or one float per group; validate pairs."""
    if len(targets) and isinstance(targets[0], torch.Tensor):
        targets, sources = [list(targets)], [list(sources)]
    targets = [list(g) for g in targets]
    sources = [list(g) for g in sources]
    if len(targets) != len(sources):
        raise ValueError(f"{len(targets)} target groups but {len(sources)} source groups")
    taus = [float(taus)] * len(targets) if isinstance(taus, (int, float)) else [float(t) for t in taus]
    if len(taus) != len(targets):
        raise ValueError(f"{len(taus)} taus for {len(targets)} groups")
    for level, (tg, sg, tau) in enumerate(zip(targets, sources, taus)):
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau of group {level} must lie in [0, 1], got {tau}")
        if len(tg) != len(sg):
            raise ValueError(f"group {level}: {len(tg)} targets but {len(sg)} sources")
        for i, (t, s) in enumerate(zip(tg, sg)):
            if t.shape != s.shape or t.dtype != s.dtype or t.device != s.device:
                raise ValueError(
                    f"group {level}, tensor {i}: target {tuple(t.shape)} {t.dtype} {t.device} does not match "
                    f"source {tuple(s.shape)} {s.dtype} {s.device}"
                )
            if not t.is_floating_point():
                raise ValueError(f"group {level}, tensor {i}: EMA needs floating tensors, got {t.dtype}")
    return targets, sources, taus


@torch.no_grad()
def ema_update_reference_(targets, sources, taus) -> None:
    """Per-tensor Python loop: the ground truth for tests."""
    targets, sources, taus = _as_groups(targets, sources, taus)
    for tg, sg, tau in zip(targets, sources, taus):
        for t, s in zip(tg, sg):
            t.lerp_(s, 1.0 - tau)


@torch.no_grad()
def ema_update_(targets, sources, taus) -> None:
    """In-place EMA of every group with its own tau. ``targets``/``sources``: sequences of groups (one per
    level) of tensors, or flat sequences; ``taus``: one float per group or a single float.
    The Triton kernel replaces this body on CUDA; on CPU ``torch._foreach_lerp_`` is the fast path."""
    targets, sources, taus = _as_groups(targets, sources, taus)
    for tg, sg, tau in zip(targets, sources, taus):
        if tg:
            torch._foreach_lerp_(tg, sg, 1.0 - tau)
