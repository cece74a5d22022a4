"""Frozen features per level, in one pass over a data set: the EMA target encoders' encodings (clip
averages for probes, per-step averages for the state probe) and the model's own predictions of the
future steps from a past-only context (for the future-state error)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hjepa_fast.config import ConfigError
from hjepa_fast.masks import LevelMasks
from hjepa_fast.model.hjepa import HJEPA


@dataclass
class LevelFeatures:
    pooled: np.ndarray  # [n, D] target tokens averaged over the clip: the probe features
    steps: np.ndarray  # [n, T, D] L2-normalised target tokens averaged over space, per step of this level
    predicted: np.ndarray  # [n, T - c, D] the same of the predicted tokens, per future step
    states: np.ndarray | None  # [n, T, S] ground-truth state averaged over each step's frames; None: no state


@dataclass
class FeatureSet:
    levels: list[LevelFeatures]
    labels: dict[str, np.ndarray]  # {name: [n]}
    context_steps: list[int]  # c per level: the steps the predictors see; the rest are predicted


def context_cut(model: HJEPA, fraction: float) -> int:
    """Frames of context for the future-state probe: about ``fraction`` of the clip, rounded to whole
    steps of the top level, so that every level's context ends on one of its own step boundaries."""
    top_steps = model.grids[-1][0]
    if top_steps < 2:
        raise ConfigError(f"level {model.levels} has a single time step (data.frames={model.frames}, model.tubelet, "
                          "model.temporal_strides): it has no future to predict; use more frames or smaller strides")
    top_frames = model.frames // top_steps
    return min(max(round(fraction * top_steps), 1), top_steps - 1) * top_frames


def future_masks(model: HJEPA, cut: int, batch: int, device: torch.device) -> list[LevelMasks]:
    """Per level: context = the steps inside the first ``cut`` frames, target = every later step."""
    masks = []
    for T, H, W in model.grids:
        c, n = cut // (model.frames // T), H * W
        masks.append(LevelMasks(torch.arange(c * n, device=device).expand(batch, -1),
                                torch.arange(c * n, T * n, device=device).expand(batch, -1)))
    return masks


def _spatial_mean(tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """``[B, steps*N, D]`` (time-major) -> ``[B, steps, D]``: the mean of the L2-normalised tokens. The
    loss compares predictions and targets after L2 normalisation, so a prediction's scale is arbitrary."""
    unit = torch.nn.functional.normalize(tokens.float(), dim=-1)
    return unit.view(tokens.shape[0], steps, -1, tokens.shape[-1]).mean(dim=2)


@torch.no_grad()
def extract_features(model: HJEPA, dataset, n_clips: int, batch_size: int, device: torch.device,
                     cut: int, bar=None) -> FeatureSet:
    """Features of the first ``n_clips`` clips of ``dataset``, with ``cut`` context frames for the
    predictions. States come from ``dataset.positions(index)`` (``[frames, S]``) where the data set has it.
    ``bar``: a tqdm bar advanced by the clips done (an eval runs for minutes on a CPU)."""
    n = min(n_clips, len(dataset))
    model.eval()
    has_state = hasattr(dataset, "positions")
    pooled, steps, predicted, states = ([[] for _ in model.grids] for _ in range(4))
    labels: dict[str, list[int]] = {}
    for start in range(0, n, batch_size):
        indices = range(start, min(start + batch_size, n))
        items = [dataset[(i, 0)] for i in indices]
        clips = torch.stack([it["clip"] for it in items]).to(device)
        actions = torch.stack([it["actions"] for it in items]).to(device) if "actions" in items[0] else None
        masks = future_masks(model, cut, len(items), device)
        targets = model.encode_targets(clips)
        preds = model.predict(model.encode_context(clips, masks), masks, actions)
        truth = np.stack([dataset.positions(i) for i in indices]) if has_state else None  # [B, frames, S]
        for level, ((T, _, _), target, pred) in enumerate(zip(model.grids, targets, preds)):
            pooled[level].append(target.mean(dim=1).float().cpu().numpy())
            steps[level].append(_spatial_mean(target, T).cpu().numpy())
            predicted[level].append(_spatial_mean(pred, T - cut // (model.frames // T)).cpu().numpy())
            if truth is not None:
                states[level].append(truth.reshape(len(items), T, -1, truth.shape[-1]).mean(axis=2))
        for it in items:
            for name, value in it["labels"].items():
                labels.setdefault(name, []).append(value)
        if bar is not None:
            bar.update(len(items))
    levels = [LevelFeatures(np.concatenate(p), np.concatenate(s), np.concatenate(q),
                            np.concatenate(st) if has_state else None)
              for p, s, q, st in zip(pooled, steps, predicted, states)]
    return FeatureSet(levels, {k: np.asarray(v) for k, v in labels.items()},
                      [cut // (model.frames // T) for T, _, _ in model.grids])
