"""Top-down context: what level l+1 knows, handed to level l's predictor without leaking the future.

Level l+1's online context encodings are averaged per coarse time step (``summarize_by_time``). A level-l
token at time ``t`` may use coarse step ``tau`` only if that window ended before ``t``'s window began
(``tau < t // window``) and level l+1 saw something there (``causal_allowed``); a learned null token is
always allowed, so every token has something to attend to.
"""
from __future__ import annotations

import torch


def summarize_by_time(z: torch.Tensor, idx: torch.Tensor, tokens_per_step: int, steps: int):
    """Mean of z ``[B, K, D]`` (tokens at flat indices idx ``[B, K]``) per time step.

    Returns ``(summary [B, steps, D], valid [B, steps] bool)``; steps with no token are zero, invalid."""
    B, K, D = z.shape
    times = idx // tokens_per_step
    sums = z.new_zeros(B, steps, D).scatter_add(1, times.unsqueeze(-1).expand(B, K, D), z)
    counts = torch.zeros(B, steps, device=z.device, dtype=z.dtype).scatter_add(1, times, torch.ones_like(z[..., 0]))
    return sums / counts.clamp(min=1).unsqueeze(-1), counts > 0


def causal_allowed(times: torch.Tensor, window: int, valid: torch.Tensor) -> torch.Tensor:
    """times ``[B, L]`` (level-l steps), valid ``[B, S]`` -> ``[B, L, 1 + S]`` bool: column 0 is the
    null token (always allowed), column ``1 + tau`` is coarse step tau (allowed iff tau < t // window and
    valid)."""
    B, S = valid.shape
    taus = torch.arange(S, device=times.device)
    allowed = (taus.view(1, 1, S) < (times // window).unsqueeze(-1)) & valid.unsqueeze(1)
    return torch.cat([torch.ones_like(allowed[..., :1]), allowed], dim=-1)


def latest_allowed(allowed: torch.Tensor) -> torch.Tensor:
    """``[B, L, 1 + S]`` -> ``[B, L]``: index of the most recent allowed column (0, the null, if none)."""
    columns = torch.arange(allowed.shape[-1], device=allowed.device)
    return (allowed.long() * columns).amax(dim=-1)
