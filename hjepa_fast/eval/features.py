"""Frozen features per level, in one pass over a data set: the EMA target encoders' encodings (clip
averages for probes, per-step averages for the prediction spread, per-step token grids for the state
probe) and the model's own predictions of the future steps from a past-only context (for the
future-state error)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hjepa_fast.config import ConfigError
from hjepa_fast.masks import LevelMasks
from hjepa_fast.model.hjepa import HJEPA

GRID_CELLS = 4  # the state probe reads each step's token grid averaged into at most 4 x 4 cells


@dataclass
class LevelFeatures:
    pooled: np.ndarray  # [n, D] target tokens averaged over the clip: the probe features
    steps: np.ndarray  # [n, T, D] L2-normalised target tokens averaged over space, per step of this level
    predicted: np.ndarray  # [n, T - c, D] the same of the predicted tokens, per future step
    states: np.ndarray | None  # [n, T, S] ground-truth state averaged over each step's frames; None: no state
    grid: np.ndarray  # [n, T, G*D] L2-normalised target tokens averaged into G <= 16 cells of the step's grid
    predicted_grid: np.ndarray  # [n, T - c, G*D] the same of the predicted tokens


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


def _cell_means(tokens: torch.Tensor, steps: int, height: int, width: int) -> torch.Tensor:
    """``[B, steps*H*W, D]`` -> ``[B, steps, G*D]``: the L2-normalised tokens of each step averaged into
    ``min(H, 4) x min(W, 4)`` cells. A state such as a position lives in *which* tokens carry the object;
    the spatial mean discards it (a ridge probe on it read positions 2-6x less accurately from the same
    target features than one on the grid, measured on moving digits), and all of a ViT-B grid (196 x 768
    per step) is more than a probe needs."""
    B, D = tokens.shape[0], tokens.shape[-1]
    unit = torch.nn.functional.normalize(tokens.float(), dim=-1).view(B * steps, height, width, D)
    cells = torch.nn.functional.adaptive_avg_pool2d(unit.permute(0, 3, 1, 2),
                                                    (min(height, GRID_CELLS), min(width, GRID_CELLS)))
    return cells.flatten(1).view(B, steps, -1)


@torch.no_grad()
def extract_features(model: HJEPA, dataset, n_clips: int, batch_size: int, device: torch.device,
                     cut: int, bar=None) -> FeatureSet:
    """Features of the first ``n_clips`` clips of ``dataset``, with ``cut`` context frames for the
    predictions. States come from ``dataset.positions(index)`` (``[frames, S]``) where the data set has it.
    ``bar``: a tqdm bar advanced by the clips done (an eval runs for minutes on a CPU)."""
    n = min(n_clips, len(dataset))
    model.eval()
    has_state = hasattr(dataset, "positions")
    pooled, steps, predicted, states, grid, predicted_grid = ([[] for _ in model.grids] for _ in range(6))
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
        for level, ((T, H, W), target, pred) in enumerate(zip(model.grids, targets, preds)):
            future = T - cut // (model.frames // T)
            pooled[level].append(target.mean(dim=1).float().cpu().numpy())
            steps[level].append(_spatial_mean(target, T).cpu().numpy())
            predicted[level].append(_spatial_mean(pred, future).cpu().numpy())
            grid[level].append(_cell_means(target, T, H, W).cpu().numpy())
            predicted_grid[level].append(_cell_means(pred, future, H, W).cpu().numpy())
            if truth is not None:
                states[level].append(truth.reshape(len(items), T, -1, truth.shape[-1]).mean(axis=2))
        for it in items:
            for name, value in it["labels"].items():
                labels.setdefault(name, []).append(value)
        if bar is not None:
            bar.update(len(items))
    levels = [LevelFeatures(np.concatenate(p), np.concatenate(s), np.concatenate(q),
                            np.concatenate(st) if has_state else None, np.concatenate(g), np.concatenate(pg))
              for p, s, q, st, g, pg in zip(pooled, steps, predicted, states, grid, predicted_grid)]
    return FeatureSet(levels, {k: np.asarray(v) for k, v in labels.items()},
                      [cut // (model.frames // T) for T, _, _ in model.grids])
