"""Collapse diagnostics on a feature set ``[n, D]``: per-dimension spread and effective rank (RankMe).

Both work on torch tensors on any device and return tensors, so the trainer can compute them on its
log steps without an extra host synchronisation; ``collapse_report`` is the host-side summary."""
from __future__ import annotations

import math

import torch

# a feature set is flagged as collapsed below either floor
MIN_RANKME = 1.5  # the clips vary along effectively one direction (or none)
MIN_SPREAD = 1e-3  # normalised spread (see ``feature_spread``): 1 for isotropic features, 0 for a constant


def rankme(features: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe (Garrido et al., 2023) of ``[n, D]``: exp of the entropy of the normalised singular values;
    1 for rank-1 features, up to ``min(n, D)`` for full-rank ones, 0 for a constant. Computed on the
    *centred* features (the paper's are not): a shared offset, which after LayerNorm and token averaging
    dominates the raw features, would otherwise read as rank 1 for every encoder."""
    x = features.float()
    s = torch.linalg.svdvals(x - x.mean(dim=0))
    total = s.sum()
    p = s / total.clamp_min(eps) + eps
    return torch.where(total > eps * s.shape[0], torch.exp(-(p * p.log()).sum()), torch.zeros_like(total))


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """Per-dimension std across rows of the L2-normalised features ``[n, D]``, averaged over dimensions,
    times ``sqrt(D)``: about 1 for isotropic features, 0 for a constant encoder, comparable across widths."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    return x.std(dim=0).mean() * math.sqrt(x.shape[-1])


def collapse_report(features: torch.Tensor) -> dict[str, float | bool]:
    """``{"spread", "rankme", "dim", "collapsed"}`` of ``[n, D]`` (``n >= 2``); ``collapsed`` when RankMe is
    below ``MIN_RANKME`` or the spread below ``MIN_SPREAD``."""
    if features.shape[0] < 2:
        raise ValueError(f"collapse diagnostics need at least 2 feature rows, got {features.shape[0]}")
    spread, rank = feature_spread(features).item(), rankme(features).item()
    return {"spread": spread, "rankme": rank, "dim": int(features.shape[-1]),
            "collapsed": bool(rank < MIN_RANKME or spread < MIN_SPREAD)}
