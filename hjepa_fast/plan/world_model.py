"""A trained H-JEPA seen as a latent world model for planning, with an analytic FLOP count.

The model works on clips of ``frames`` frames (tubelet 1: one level-1 step per frame) trained with
``future`` masks: level l sees its first ``c_l`` steps and predicts the rest from the actions. At
planning time the clip's first ``c_1`` frames are the recent history (the oldest repeated when the
episode is younger), the rest is the imagined future: action slot ``s`` moves frame ``s`` to ``s + 1``,
so the planned slots are ``c_1 - 1 .. frames - 2`` and the last slot is zero."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hjepa_fast.builders import build_mask_sampler
from hjepa_fast.config import Config, ConfigError
from hjepa_fast.flops import encoder_forward, predictor_forward, predictor_passes
from hjepa_fast.masks import LevelMasks
from hjepa_fast.model.hjepa import HJEPA


@dataclass
class State:
    """What one observation gives the planner (batch 1): each level's online context encodings, each
    level's target encodings of the history clip (for lifting predictions a level up), past actions."""

    context: list[torch.Tensor]  # [1, Nc_l, D_l]
    targets: list[torch.Tensor]  # [1, T_l * hw, D_l]
    past: torch.Tensor  # [c_1 - 1, A]


class PlanningModel:
    def __init__(self, model: HJEPA, cfg: Config):
        m = cfg.model
        if m.tubelet != 1 or m.action_dim < 1:
            raise ConfigError("planning needs model.tubelet=1 (a step per frame) and model.action_dim > 0")
        if any(s != "future" for s in cfg.masks.strategies) or len(set(cfg.masks.context_fraction)) != 1:
            raise ConfigError("planning needs a model trained with masks.strategies=future at every level and "
                              "one masks.context_fraction (a fixed history length)")
        self.model, self.cfg = model.eval().requires_grad_(False), cfg  # the gradient planner: actions only
        self.device = next(model.parameters()).device  # every tensor of the planning path lives here
        self.frames, self.action_dim, self.levels = cfg.data.frames, m.action_dim, m.levels
        self.hw = (m.img_size // m.patch_size) ** 2
        masks = build_mask_sampler(cfg).sample(1, torch.Generator().manual_seed(0))
        self.masks = [LevelMasks(mk.context.to(self.device), mk.target.to(self.device)) for mk in masks]
        self.steps = [g[0] for g in model.grids]  # T_l
        self.span = [math.prod(m.temporal_strides[:k + 1]) for k in range(self.levels)]  # frames per step
        self.context_steps = [mk.context.shape[1] // self.hw for mk in self.masks]  # c_l
        for k, c in enumerate(self.context_steps):
            if c * self.span[k] != self.context_steps[0]:
                raise ConfigError(f"level {k + 1} sees {c} steps of {self.span[k]} frames, level 1 sees "
                                  f"{self.context_steps[0]} frames: histories must align to plan across levels")
        self.history = self.context_steps[0]
        self.horizon = self.frames - self.history  # planned slots
        self.flops = 0.0

    # ---- observations and goals --------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, frames: list[np.ndarray], actions: list[np.ndarray]) -> State:
        """frames: the episode so far (uint8 ``[C, H, W]`` each), actions: those taken between them."""
        h = self.history
        obs = self.history_frames(frames)
        past = list(actions[-(h - 1):]) if h > 1 else []
        past = [np.zeros(self.action_dim)] * (h - 1 - len(past)) + past
        clip = torch.zeros(1, self.frames, *obs[0].shape, dtype=torch.uint8, device=self.device)
        clip[0, :h] = torch.from_numpy(np.stack(obs)).to(self.device)
        past = torch.tensor(np.array(past), dtype=torch.float32, device=self.device).reshape(h - 1, self.action_dim)
        self.flops += self.encode_flops(online=True)
        return State(self.model.encode_context(clip, self.masks), self.model.encode_targets(clip), past)

    def history_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """The clip's first ``history`` frames: the episode's latest, the first repeated while it is younger."""
        return [frames[0]] * max(0, self.history - len(frames)) + list(frames[-self.history:])

    @torch.no_grad()
    def goal(self, frame: np.ndarray) -> list[torch.Tensor]:
        """Each level's target encoding of a clip that shows only the goal, at its last step: ``[hw, D_l]``."""
        clip = torch.from_numpy(frame).to(self.device).expand(1, self.frames, *frame.shape).contiguous()
        self.flops += self.encode_flops(online=False)
        return [t[0, -self.hw:] for t in self.model.encode_targets(clip)]

    # ---- imagination ------------------------------------------------------------------------------
    def full_actions(self, state: State, future: torch.Tensor) -> torch.Tensor:
        """future ``[N, horizon, A]`` -> the clip's actions ``[N, frames, A]`` (past, future, a zero slot)."""
        N = future.shape[0]
        return torch.cat([state.past.expand(N, -1, -1), future, future.new_zeros(N, 1, self.action_dim)], 1)

    def predict(self, state: State, level: int, future: torch.Tensor, steps: range) -> torch.Tensor:
        """Level ``level``'s predicted tokens at its time ``steps`` for N action sequences, in one batched
        forward: ``[N, len(steps), hw, D_l]``."""
        N = future.shape[0]
        context = [c.expand(N, -1, -1) for c in state.context]
        masks = [LevelMasks(mk.context.expand(N, -1), mk.target.expand(N, -1)) for mk in self.masks]
        target = torch.arange(steps.start * self.hw, steps.stop * self.hw, device=self.device).expand(N, -1)
        masks[level] = LevelMasks(masks[level].context, target)
        pred = self.model.predict_at(level, context, masks, self.full_actions(state, future))
        grad = 3 if torch.is_grad_enabled() and future.requires_grad else 1
        self.flops += grad * N * self.prediction_flops(level, context[level].shape[1], target.shape[1])
        return pred.view(N, len(steps), self.hw, -1)

    def prediction_flops(self, level: int, context: int, targets: int) -> float:
        """Forward FLOPs of one clip's prediction at ``level`` (``HJEPA.predict_at``): each predictor pass,
        and with ``model.topdown_source=prediction`` the levels above, whose predictions it reads."""
        flops = sum(sum(predictor_forward(self.cfg, level, c, t))
                    for c, t in predictor_passes(self.cfg, level, context, targets))
        if self.cfg.model.topdown_source == "prediction" and level + 1 < self.levels:
            above = self.masks[level + 1]
            flops += self.prediction_flops(level + 1, above.context.shape[1], above.target.shape[1])
        return flops

    def lift(self, state: State, level: int, pred: torch.Tensor, first: int) -> torch.Tensor:
        """Level ``level``'s predicted tokens ``[N, n, hw, D]`` at steps ``first ..`` written into the
        history's target encodings, then encoded by level ``level + 1``'s target encoder; returns level
        ``level + 1``'s tokens at its first future step ``[N, hw, D_{l+1}]`` (what a subgoal is compared to)."""
        N, n = pred.shape[:2]
        grid = state.targets[level].view(1, self.steps[level], self.hw, -1).expand(N, -1, -1, -1).clone()
        grid[:, first:first + n] = pred
        up = self.model.target_encoders[level + 1](grid)
        c = self.context_steps[level + 1]
        grad = 3 if torch.is_grad_enabled() and pred.requires_grad else 1
        self.flops += grad * N * sum(encoder_forward(self.cfg, level + 1, self.steps[level + 1] * self.hw))
        return up[:, c * self.hw:(c + 1) * self.hw]

    def encode_flops(self, online: bool) -> float:
        """Analytic FLOPs of encoding one clip at every level: the target path, plus the online context
        path if ``online``."""
        total = 0.0
        for level in range(self.levels):
            full = self.steps[level] * self.hw
            total += sum(encoder_forward(self.cfg, level, full))  # target path
            if online:
                total += sum(encoder_forward(self.cfg, level, self.masks[level].context.shape[1]))
        return total
