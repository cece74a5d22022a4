"""How the per-level losses add up to the training loss."""
from __future__ import annotations

import torch
from torch import nn

WEIGHTINGS = ("uniform", "increasing", "curriculum", "uncertainty")


class LossWeighting(nn.Module):
    """total = sum_l w_l * loss_l.

    uniform: w_l = 1/L. increasing: w_l = l / (1 + ... + L), higher levels count more.
    curriculum: level 1 from the start; level l (l >= 2) ramps linearly from 0 to 1 over steps
    [(l-2)S, (l-1)S], S = ``curriculum_steps``; weights divided by L. uncertainty (Kendall et al. 2018):
    total = (1/L) sum_l exp(-s_l) loss_l + s_l with learned log-variances s_l (initialised at 0)."""

    def __init__(self, levels: int, mode: str = "uniform", curriculum_steps: int = 100):
        super().__init__()
        if mode not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {mode!r}; choose one of {WEIGHTINGS}")
        self.levels, self.mode, self.curriculum_steps = levels, mode, max(curriculum_steps, 1)
        if mode == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(levels))

    def weights(self, step: int) -> list[float]:
        """The fixed weights at ``step`` (uncertainty: exp(-s_l)/L, read from the parameters)."""
        L = self.levels
        if self.mode == "uniform":
            return [1.0 / L] * L
        if self.mode == "increasing":
            return [(level + 1) / (L * (L + 1) / 2) for level in range(L)]
        if self.mode == "curriculum":
            ramp = [1.0] + [min(max((step - (lvl - 1) * self.curriculum_steps) / self.curriculum_steps, 0.0), 1.0)
                            for lvl in range(1, L)]
            return [r / L for r in ramp]
        return (torch.exp(-self.log_vars.detach()) / L).tolist()

    def forward(self, losses: list[torch.Tensor], step: int) -> torch.Tensor:
        if self.mode == "uncertainty":
            stacked = torch.stack([loss.float() for loss in losses])
            return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum() / self.levels
        return sum(w * loss.float() for w, loss in zip(self.weights(step), losses))
