"""Top-down context: what level l+1 knows, handed to level l's predictor without leaking the future.

Level l+1's online context encodings are averaged per coarse time step (``summarize_by_time``), or with
``model.topdown_keys=token`` kept one key per coarse step and position (levels share the spatial grid, so
where the level above sees something survives). A level-l token at time ``t`` may use coarse step ``tau``
only if that window ended before ``t``'s window began (``tau < t // window``) and level l+1 saw something
there (``causal_allowed``); a learned null token is always allowed, so every token has something to attend
to.

With ``model.topdown_source=prediction`` the coarse steps that level l+1 does not see carry its own
predictions there instead (``fill_predicted``, detached: each level's predictor is trained by its own
loss). A level-l token at time ``t`` may read a predicted step ``tau <= t // window``: the level above's
expectation of the window that holds ``t`` (and of the earlier ones). Nothing leaks: level l+1's
predictions are computed from its context, which holds no level's targets (``masks``).
"""
from __future__ import annotations

import torch


def summarize_by_time(z: torch.Tensor, idx: torch.Tensor, tokens_per_key: int, keys: int):
    """Mean of z ``[B, K, D]`` (tokens at flat indices idx ``[B, K]``) per group of ``tokens_per_key``
    consecutive flat indices: per time step (``tokens_per_key`` = the tokens of a step), or per token (1).

    Returns ``(summary [B, keys, D], valid [B, keys] bool)``; groups with no token are zero, invalid."""
    B, K, D = z.shape
    group = idx // tokens_per_key
    sums = z.new_zeros(B, keys, D).scatter_add(1, group.unsqueeze(-1).expand(B, K, D), z)
    counts = torch.zeros(B, keys, device=z.device, dtype=z.dtype).scatter_add(1, group, torch.ones_like(z[..., 0]))
    return sums / counts.clamp(min=1).unsqueeze(-1), counts > 0


def fill_predicted(summary: torch.Tensor, valid: torch.Tensor, pred: torch.Tensor, pred_idx: torch.Tensor,
                   tokens_per_key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The context ``summary [B, S, D]`` (``valid [B, S]``) with each key that has no context but has
    predicted tokens (``pred [B, M, D]`` at flat indices ``pred_idx [B, M]``) replaced by their mean
    (detached). Returns ``(summary, valid | predicted, predicted [B, S] bool)``."""
    keys = summary.shape[1]
    predicted_summary, has_prediction = summarize_by_time(pred.detach(), pred_idx, tokens_per_key, keys)
    predicted = has_prediction & ~valid
    summary = torch.where(predicted.unsqueeze(-1), predicted_summary.to(summary.dtype), summary)
    return summary, valid | predicted, predicted


def causal_allowed(times: torch.Tensor, window: int, valid: torch.Tensor,
                   predicted: torch.Tensor | None = None, keys_per_step: int = 1) -> torch.Tensor:
    """times ``[B, L]`` (level-l steps), valid ``[B, S]`` -> ``[B, L, 1 + S]`` bool: column 0 is the
    null token (always allowed), column ``1 + k`` is key k of coarse step tau = k // ``keys_per_step``
    (allowed iff tau < t // window and valid; a ``predicted [B, S]`` key iff tau <= t // window)."""
    B, S = valid.shape
    taus = (torch.arange(S, device=times.device) // keys_per_step).view(1, 1, S)
    coarse = (times // window).unsqueeze(-1)
    allowed = (taus < coarse) & valid.unsqueeze(1)
    if predicted is not None:
        allowed = allowed | ((taus <= coarse) & predicted.unsqueeze(1))
    return torch.cat([torch.ones_like(allowed[..., :1]), allowed], dim=-1)


def latest_allowed(allowed: torch.Tensor) -> torch.Tensor:
    """``[B, L, 1 + S]`` -> ``[B, L]``: index of the most recent allowed column (0, the null, if none)."""
    columns = torch.arange(allowed.shape[-1], device=allowed.device)
    return (allowed.long() * columns).amax(dim=-1)
