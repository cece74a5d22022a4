"""Step schedules: learning rate, weight decay, EMA momentum."""
from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at ``total`` (held at ``end`` after)."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine decay to ``final``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(step - warmup, total - warmup, peak, final)


def ema_momentum(step: int, total: int, tau_base: float, tau_end: float) -> float:
    """tau_t = tau_end - (tau_end - tau_base) * (cos(pi t / T) + 1) / 2: tau_base at 0, tau_end at T."""
    return cosine(step, total, tau_base, tau_end)
