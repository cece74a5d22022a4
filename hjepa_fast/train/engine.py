"""Engines wrap a finished model and its optimiser: backward, step, state. The trainer drives any engine
the same way; this file holds the single-process engine (DDP/FSDP/DeepSpeed come with scale-out)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SingleProcessEngine:
    """One process, one device."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
