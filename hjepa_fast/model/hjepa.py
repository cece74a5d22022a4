"""The H-JEPA stack: one encoder, EMA target encoder and narrow predictor per level.

A training step (``HJEPA.forward``) reads like the algorithm:
1. target path (no grad): every level's EMA target encoder on the full, unmasked input;
2. bottom-up online path: level 1 encodes its context tokens; level l+1 pools level l's *context*
   encodings (a masked pool) and encodes its own context tokens;
3. top-down prediction, from level L down to 1: each predictor gets its context, mask tokens at the
   targets, actions, and the causally aligned summary of the level above (``model.topdown_source``: of
   its context, or of its context and its predictions);
4. loss: the masked-token prediction loss per level (L2-normalised, or the I-JEPA / V-JEPA convention),
   weighted into one total, plus each level's anti-collapse term on its context embeddings.

``model.share_encoders``: levels above 1 run level 1's transformer blocks and final LayerNorm (the same
modules, so the same parameters, also in the target copy); each level keeps its own tokenizer, position
table and predictor. A shared parameter belongs to level 1 for the EMA (``ema_pairs``: level 1's tau).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from hjepa_fast.config import LossConfig, ModelConfig
from hjepa_fast.kernels import masked_jepa_loss, masked_l2_loss
from hjepa_fast.masks import LevelMasks

from .abstraction import build_abstraction
from .attention import resolve_backend
from .encoder import LevelEncoder, PatchEmbed3D, scatter_tokens
from .loss_weighting import LossWeighting
from .predictor import Predictor
from .regularizers import AntiCollapse
from .topdown import fill_predicted, summarize_by_time


@dataclass
class HJEPAOutput:
    loss: torch.Tensor  # the weighted total, scalar
    level_losses: list[torch.Tensor]  # the prediction loss of each level, scalar (detached)
    level_regularizers: list[torch.Tensor]  # each level's weighted anti-collapse term (detached; 0: none)


def normalize_clips(clips: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, C, H, W]`` -> float in [-1, 1] (float inputs are taken as already normalised)."""
    if clips.dtype == torch.uint8:
        return clips.float().div_(127.5).sub_(1.0)
    return clips


def share_trunk(encoders: list[LevelEncoder]) -> None:
    """Make every encoder above the first run the first one's ``blocks`` and ``norm`` (the same modules)."""
    first = encoders[0]
    shape = lambda e: (e.norm.normalized_shape[0], len(e.blocks))  # (width, depth)
    for level, encoder in enumerate(encoders[1:], start=2):
        if shape(encoder) != shape(first):
            raise ValueError(f"shared encoders need one (width, depth): level 1 has {shape(first)}, "
                             f"level {level} {shape(encoder)}")
        encoder.blocks, encoder.norm = first.blocks, first.norm


def level_parameters(modules: nn.ModuleList) -> list[list[nn.Parameter]]:
    """One list of parameters per module, each parameter only in the first module that holds it."""
    seen: set[int] = set()
    groups = []
    for module in modules:
        groups.append([p for p in module.parameters() if id(p) not in seen])
        seen.update(id(p) for p in groups[-1])
    return groups


class HJEPA(nn.Module):
    """H-JEPA over clips ``[B, frames, C, H, W]`` (+ actions ``[B, frames, A]``).

    Level l (0-based) has a ``(T_l, H', W')`` token grid with ``T_0 = frames / tubelet`` and
    ``T_l = T_{l-1} / temporal_strides[l]``; ``H' = W' = img_size / patch_size``."""

    def __init__(self, cfg: ModelConfig, frames: int, loss: LossConfig | None = None):
        super().__init__()
        loss = loss or LossConfig()
        self.cfg, self.prediction = cfg, loss.prediction
        side = cfg.img_size // cfg.patch_size
        steps, self.grids = frames // cfg.tubelet, []
        for stride in cfg.temporal_strides:
            steps //= stride
            self.grids.append((steps, side, side))
        self.frames = frames
        backend = resolve_backend(cfg.attention_backend)
        self.keys_per_step = side * side if cfg.topdown_keys == "token" else 1  # top-down keys per coarse step
        L = cfg.levels
        encoders, predictors = [], []
        for level in range(L):
            dim = cfg.encoder_dims[level]
            if level == 0:
                tokenizer = PatchEmbed3D(cfg.in_chans, dim, cfg.patch_size, cfg.tubelet)
            else:
                tokenizer = build_abstraction(cfg.abstraction, cfg.encoder_dims[level - 1], dim,
                                              cfg.temporal_strides[level], cfg.encoder_heads[level])
            encoders.append(LevelEncoder(tokenizer, self.grids[level], dim, cfg.encoder_depths[level],
                                         cfg.encoder_heads[level], cfg.mlp_ratio, cfg.drop_path, backend))
            has_above = level + 1 < L
            predictors.append(Predictor(
                dim, cfg.predictor_dims[level], cfg.predictor_depths[level], cfg.predictor_heads[level],
                self.grids[level], cfg.mlp_ratio, cfg.drop_path, backend, cfg.action_dim,
                topdown=cfg.topdown if has_above else "none",
                topdown_dim=cfg.encoder_dims[level + 1] if has_above else None,
                window=cfg.temporal_strides[level + 1] if has_above else 1,
                action_chunk=self.action_chunk(level), action_accumulate=cfg.action_accumulate,
                init=cfg.predictor_init, keys_per_step=self.keys_per_step,
            ))
        if cfg.share_encoders:
            share_trunk(encoders)
        self.encoders = nn.ModuleList(encoders)
        self.predictors = nn.ModuleList(predictors)
        self.target_encoders = copy.deepcopy(self.encoders)  # the deepcopy memo keeps the sharing
        self.target_encoders.requires_grad_(False)
        self.rollout_steps = list(loss.rollout_steps[:L])
        self.loss_weighting = LossWeighting(L, loss.weighting, loss.curriculum_steps)
        self.anti_collapse = AntiCollapse(loss.variance_weight[:L], loss.covariance_weight[:L],
                                          loss.sigreg_weight[:L], loss.sigreg_slices, loss.regularizer_tokens)

    def action_chunk(self, level: int) -> int:
        """Frames of actions one step of ``level`` encodes: 1 at level 1 (its primitive action, averaged
        over a tubelet), the whole window above (a macro-action)."""
        return 1 if level == 0 else self.frames // self.grids[level][0]

    def level_actions(self, actions: torch.Tensor, level: int) -> torch.Tensor:
        """actions ``[B, frames, A]`` -> level ``level``'s action input ``[B, T_l, chunk * A]``."""
        B, F, A = actions.shape
        T = self.grids[level][0]
        if level == 0:
            return actions.reshape(B, T, F // T, A).mean(2)
        return actions.reshape(B, T, F // T * A)

    def train(self, mode: bool = True) -> HJEPA:
        """Train mode for the online modules; the target encoders always stay in eval mode: a target is a
        deterministic function of the EMA weights (no stochastic depth in the teacher, as in DINO), and
        every target forward is one graph for ``torch.compile``."""
        super().train(mode)
        self.target_encoders.eval()
        return self

    @property
    def levels(self) -> int:
        return len(self.encoders)

    def online_parameters(self) -> list[nn.Parameter]:
        """Everything the optimiser trains: encoders, predictors, loss weights (not the targets)."""
        return [p for name, p in self.named_parameters() if not name.startswith("target_encoders.")]

    def ema_pairs(self) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """(targets, sources): one group of parameter tensors per level, in matching order; each tensor
        appears once, in the lowest level that holds it (``share_encoders``: level 1)."""
        return level_parameters(self.target_encoders), level_parameters(self.encoders)

    @torch.no_grad()
    def encode_targets(self, clips: torch.Tensor) -> list[torch.Tensor]:
        """Every level's target encoding of the full input: list of ``[B, T_l*N, D_l]``."""
        x, out = normalize_clips(self._check_clips(clips)), []
        for level, encoder in enumerate(self.target_encoders):
            if level > 0:
                T, side, _ = self.grids[level - 1]
                x = out[-1].view(out[-1].shape[0], T, side * side, -1)
            out.append(encoder(x))
        return out

    def _check_clips(self, clips: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        expected = (self.frames, c.in_chans, c.img_size, c.img_size)
        if clips.dim() != 5 or tuple(clips.shape[1:]) != expected:
            raise ValueError(f"clips must be [B, {', '.join(map(str, expected))}] (B, frames, C, H, W), "
                             f"got {tuple(clips.shape)}")
        return clips

    def encode_context(self, clips: torch.Tensor, masks: list[LevelMasks]) -> list[torch.Tensor]:
        """Bottom-up online path: level l's encodings of its context tokens, ``[B, Nc_l, D_l]``."""
        out = []
        for level, encoder in enumerate(self.encoders):
            if level == 0:
                out.append(encoder(normalize_clips(self._check_clips(clips)), keep=masks[0].context))
                continue
            T, side, _ = self.grids[level - 1]
            grid, visible = scatter_tokens(out[-1], masks[level - 1].context, T * side * side)
            B = grid.shape[0]
            out.append(encoder(grid.view(B, T, side * side, -1), visible.view(B, T, side * side),
                               keep=masks[level].context))
        return out

    def predict(self, context: list[torch.Tensor], masks: list[LevelMasks],
                actions: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Top-down prediction from level L to 1: list of ``[B, Nt_l, D_l]``, bottom level first."""
        preds: list[torch.Tensor] = [None] * self.levels  # type: ignore[list-item]
        for level in reversed(range(self.levels)):
            above = preds[level + 1] if level + 1 < self.levels else None
            preds[level] = self.predict_at(level, context, masks, actions, above)
        return preds

    def predict_at(self, level: int, context: list[torch.Tensor], masks: list[LevelMasks],
                   actions: torch.Tensor | None = None, above_prediction: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """Level ``level``'s prediction ``[B, Nt, D_l]`` at its mask's targets, as training makes it: one
        pass, or a rollout where ``loss.rollout_steps`` > 1. A planner calls this for the level it plans at."""
        if above_prediction is None and self.cfg.topdown_source == "prediction" and level + 1 < self.levels:
            above_prediction = self.predict_at(level + 1, context, masks, actions)  # once, for every pass
        if self.rollout_steps[level] > 1:
            return self.rollout_level(level, context, masks, actions, above_prediction)
        return self.predict_level(level, context, masks, actions, above_prediction=above_prediction)

    def rollout_level(self, level: int, context: list[torch.Tensor], masks: list[LevelMasks],
                      actions: torch.Tensor | None = None, above_prediction: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Level ``level``'s prediction ``[B, Nt, D_l]`` of its future targets as a latent rollout of
        ``loss.rollout_steps`` = k passes: each of the first k - 1 target steps is predicted alone and
        appended to the context (with its gradient) for the next pass; the last pass predicts the rest.
        The targets are whole time steps in order (``masks.strategies`` = future, checked by the config),
        so the passes cut them by shape alone, with no host sync."""
        _, h, w = self.grids[level]
        target = masks[level].target
        passes = min(self.rollout_steps[level], target.shape[1] // (h * w))
        z, visible, parts = context[level], masks[level].context, []
        for j in range(passes):
            step = target[:, j * h * w:] if j == passes - 1 else target[:, j * h * w:(j + 1) * h * w]
            here = LevelMasks(visible, masks[level].target)
            pred = self.predict_level(level, [*context[:level], z, *context[level + 1:]],
                                      [*masks[:level], here, *masks[level + 1:]], actions, step, above_prediction)
            parts.append(pred)
            if j < passes - 1:
                z, visible = torch.cat([z, pred.to(z.dtype)], 1), torch.cat([visible, step], 1)
        return torch.cat(parts, 1)

    def predict_level(self, level: int, context: list[torch.Tensor], masks: list[LevelMasks],
                      actions: torch.Tensor | None = None, target: torch.Tensor | None = None,
                      above_prediction: torch.Tensor | None = None) -> torch.Tensor:
        """Level ``level``'s prediction ``[B, Nt, D_l]`` at ``target`` ``[B, Nt]`` (default: its mask's
        targets) in one pass, with top-down context from the level above (``model.topdown_source``: its
        online context, or that plus its prediction ``above_prediction`` at its mask's targets, computed
        here when not given)."""
        topdown = None
        if level + 1 < self.levels:
            T, h, w = self.grids[level + 1]
            group, keys = h * w // self.keys_per_step, T * self.keys_per_step  # flat tokens per key, keys
            topdown = summarize_by_time(context[level + 1], masks[level + 1].context, group, keys)
            if self.cfg.topdown_source == "prediction":
                if above_prediction is None:
                    above_prediction = self.predict_at(level + 1, context, masks, actions)
                topdown = fill_predicted(*topdown, above_prediction, masks[level + 1].target, group)
        level_actions = None if actions is None else self.level_actions(actions, level)
        return self.predictors[level](context[level], masks[level].context,
                                      masks[level].target if target is None else target, level_actions, topdown)

    def forward(self, clips: torch.Tensor, masks: list[LevelMasks], actions: torch.Tensor | None = None,
                step: int = 0) -> HJEPAOutput:
        if len(masks) != self.levels:
            raise ValueError(f"got masks for {len(masks)} levels, the model has {self.levels}")
        targets = self.encode_targets(clips)
        context = self.encode_context(clips, masks)
        preds = self.predict(context, masks, actions)
        losses = [self.prediction_loss(p, t, m.target) for p, t, m in zip(preds, targets, masks)]
        regs = [self.anti_collapse(level, z, m.context, grid, step) if self.anti_collapse.active(level)
                else z.new_zeros((), dtype=torch.float32)
                for level, (z, m, grid) in enumerate(zip(context, masks, self.grids))]
        total = self.loss_weighting(losses, step) + sum(regs)
        return HJEPAOutput(total, [loss.detach() for loss in losses], [r.detach() for r in regs])

    def prediction_loss(self, pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``loss.prediction`` between ``pred [B, M, D]`` and ``target [B, N, D]`` gathered at ``idx [B, M]``.
        The sampler's indices are in range by construction: no host sync per level (``check_idx``)."""
        if self.prediction == "l2":
            return masked_l2_loss(pred, target, idx, check_idx=False)
        kind = "smooth_l1" if self.prediction == "ijepa" else "lp"
        return masked_jepa_loss(pred, target, idx, target_norm="layer", kind=kind, p=1.0, check_idx=False)

    @torch.no_grad()
    def features(self, clips: torch.Tensor) -> list[torch.Tensor]:
        """Frozen features for probes: each level's target encoding averaged over its tokens, ``[B, D_l]``."""
        return [t.mean(dim=1) for t in self.encode_targets(clips)]
