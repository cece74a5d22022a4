"""Build what every part of a run needs from a Config: the model, the data sets and the mask sampler.
Training, evaluation, planning and the benchmarks all build these, so the module sits below them
(DESIGN.md); the training-only builders (data loader, optimiser) stay in ``hjepa_fast.train.builders``."""
from __future__ import annotations

import math
import warnings

import torch

from hjepa_fast.config import Config, ConfigError, level_time_steps
from hjepa_fast.data import build_dataset
from hjepa_fast.masks import HierarchicalMaskSampler, build_sampler
from hjepa_fast.model.hjepa import HJEPA

_STRATEGY_PARAMS = {
    "multiblock": ("num_blocks", "target_scale", "target_aspect", "context_scale", "temporal_scale", "min_keep",
                   "compat"),
    "future": ("context_fraction", "horizon"),
    "segment": ("segment_fraction",),
}


def build_model(cfg: Config) -> HJEPA:
    """The H-JEPA stack, initialised from ``train.seed`` (so a random baseline is reproducible)."""
    torch.manual_seed(cfg.train.seed)
    return HJEPA(cfg.model, cfg.data.frames, cfg.loss)


def build_mask_sampler(cfg: Config) -> HierarchicalMaskSampler:
    """One sampler per level (``masks.strategies``) on that level's token grid; a mix of strategies that can
    leave level 1 nothing to see is refused here, at start-up."""
    side = cfg.model.img_size // cfg.model.patch_size
    grids = [(steps, side, side) for steps in level_time_steps(cfg)]
    strides = [math.prod(cfg.model.temporal_strides[: level + 1]) for level in range(cfg.model.levels)]
    samplers = []
    for level, (strategy, grid) in enumerate(zip(cfg.masks.strategies, grids)):
        params = {name: getattr(cfg.masks, name) for name in _STRATEGY_PARAMS[strategy]}
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        try:
            samplers.append(build_sampler(strategy, grid, **params))
        except ValueError as e:  # a setting that fits its range but not this level's grid (masks.horizon=9, ...)
            raise ConfigError(f"masks.* for level {level + 1} ({strategy}, grid T x H x W = {grid}): {e}") from None
    hier = HierarchicalMaskSampler(samplers, grids, strides, min_keep=cfg.masks.min_keep)
    _check_masks_leave_input(hier, cfg)
    return hier


def _check_masks_leave_input(hier: HierarchicalMaskSampler, cfg: Config, batches: int = 16) -> None:
    """Refuse at start-up, not at step 10,000, a mix of strategies whose targets can cover all of level 1.

    Each level's targets are held out of level 1's context (no leakage), so independent temporal draws at
    several levels (a segment here, a future there) can leave a sample nothing to see."""
    generator = torch.Generator().manual_seed(cfg.train.seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(batches):
                hier.sample(cfg.train.batch_size, generator)
    except ValueError as e:
        raise ConfigError(
            f"masks.strategies={cfg.masks.strategies} can hide all of level 1's input ({e}). Mixes that share "
            "one time split are safe: multiblock at any level, or 'future' at every level that is not multiblock"
        ) from None


def build_dataset_for(cfg: Config, split: str, train: bool = False) -> torch.utils.data.Dataset:
    """The ``split`` ("train" or "val") of ``data.dataset``, at the model's frame size and channels.
    ``train``: the training loader's set, augmented where ``data.augment`` says (evaluation never is)."""
    return build_dataset(cfg.data.dataset, split, frames=cfg.data.frames, size=cfg.model.img_size,
                         channels=cfg.model.in_chans, root=cfg.data.root, seed=cfg.data.seed,
                         frame_stride=cfg.data.frame_stride, fps=cfg.data.fps, augment=train and cfg.data.augment,
                         crop_scale=tuple(cfg.data.crop_scale), crop_aspect=tuple(cfg.data.crop_aspect),
                         hflip=cfg.data.hflip, pad_short=cfg.data.pad_short,
                         max_bad_fraction=cfg.data.max_bad_fraction, digit_size=cfg.data.digit_size,
                         digits=cfg.data.digits, background=cfg.data.background)
