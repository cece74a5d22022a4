"""The EMA driver: after each optimiser step, every level's target encoder moves toward its online
encoder with its own cosine momentum schedule, in one call of ``hjepa_fast.kernels.ema_update_``."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from hjepa_fast.kernels import ema_update_

from .schedules import ema_momentum


class TargetEMA:
    """targets/sources: one group of tensors per level; tau schedules per level over ``total_steps``."""

    def __init__(self, targets: Sequence[Sequence[torch.Tensor]], sources: Sequence[Sequence[torch.Tensor]],
                 tau_base: Sequence[float], tau_end: Sequence[float], total_steps: int):
        if not len(targets) == len(sources) == len(tau_base) == len(tau_end):
            raise ValueError("targets, sources, tau_base and tau_end need one entry per level")
        self.targets, self.sources = [list(g) for g in targets], [list(g) for g in sources]
        self.tau_base, self.tau_end, self.total_steps = list(tau_base), list(tau_end), total_steps

    def taus(self, step: int) -> list[float]:
        return [ema_momentum(step, self.total_steps, b, e) for b, e in zip(self.tau_base, self.tau_end)]

    def update(self, step: int) -> list[float]:
        """Apply the update for the optimiser step just taken (0-based ``step``); return the taus used."""
        taus = self.taus(step)
        ema_update_(self.targets, self.sources, taus)
        return taus
