"""The EMA driver: after each optimiser step, every level's target encoder moves toward its online
encoder with its own momentum schedule (``train.ema_schedule``: cosine or linear per level), in one fused
update (``hjepa_fast.kernels.MultiLevelEMA``: the parameters of all levels live in flat buffers, so a
step is one launch per dtype and device)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from hjepa_fast.kernels import EMASchedule, MultiLevelEMA


class TargetEMA:
    """targets/sources: one group of tensors per level; tau schedules (``kind``) per level over ``total_steps``.
    Build it after the model has moved to its device."""

    def __init__(self, targets: Sequence[Sequence[torch.Tensor]], sources: Sequence[Sequence[torch.Tensor]],
                 tau_base: Sequence[float], tau_end: Sequence[float], total_steps: int,
                 kind: str | Sequence[str] = "cosine"):
        if not len(targets) == len(sources) == len(tau_base) == len(tau_end):
            raise ValueError("targets, sources, tau_base and tau_end need one entry per level")
        self.fused = MultiLevelEMA(targets, sources, EMASchedule(tau_base, tau_end, total_steps, kind))

    def taus(self, step: int) -> list[float]:
        return self.fused.taus(step)

    def update(self, step: int) -> list[float]:
        """Apply the update for the optimiser step just taken (0-based ``step``); return the taus used."""
        return self.fused.step(step)
