"""Turn a Config into the objects a run needs: model, masks, data loader, optimiser."""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from hjepa_fast.config import Config, ConfigError, level_time_steps
from hjepa_fast.data import StepBatchSampler, build_dataset
from hjepa_fast.masks import HierarchicalMaskSampler, LevelMasks, MaskCollator, build_sampler
from hjepa_fast.model.hjepa import HJEPA

_STRATEGY_PARAMS = {
    "multiblock": ("num_blocks", "target_scale", "target_aspect", "context_scale", "temporal_scale", "min_keep"),
    "future": ("context_fraction", "horizon"),
    "segment": ("segment_fraction",),
}


def build_model(cfg: Config) -> HJEPA:
    """The H-JEPA stack, initialised from ``train.seed`` (so a random baseline is reproducible)."""
    torch.manual_seed(cfg.train.seed)
    return HJEPA(cfg.model, cfg.data.frames, cfg.loss)


def build_mask_sampler(cfg: Config) -> HierarchicalMaskSampler:
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


def build_dataset_for(cfg: Config, split: str, train: bool = False):
    """``train``: the training loader's set, augmented where ``data.augment`` says (evaluation never is)."""
    return build_dataset(cfg.data.dataset, split, frames=cfg.data.frames, size=cfg.model.img_size,
                         channels=cfg.model.in_chans, root=cfg.data.root, seed=cfg.data.seed,
                         frame_stride=cfg.data.frame_stride, fps=cfg.data.fps, augment=train and cfg.data.augment,
                         crop_scale=tuple(cfg.data.crop_scale), crop_aspect=tuple(cfg.data.crop_aspect),
                         hflip=cfg.data.hflip, pad_short=cfg.data.pad_short,
                         max_bad_fraction=cfg.data.max_bad_fraction, digit_size=cfg.data.digit_size,
                         digits=cfg.data.digits, background=cfg.data.background)


def build_train_loader(cfg: Config, start_step: int = 0, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    """Batches for steps ``start_step .. train.steps - 1``, each with its masks drawn in the collate
    function (inside the workers) from a generator seeded by (train.seed, step): resuming at a step
    reproduces the batches and masks an uninterrupted run would have seen. With ``world`` > 1, rank
    ``rank`` gets its rows of every global batch and of the global batch's masks."""
    dataset = build_dataset_for(cfg, "train", train=True)
    sampler = StepBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, start_step=start_step,
                               total_steps=cfg.train.steps - start_step, clips_per_video=cfg.data.clips_per_video)
    masks = build_mask_sampler(cfg)
    if world > 1:
        sampler = RankSlice(sampler, rank, world)
        masks = RankSliceMasks(masks, cfg.train.batch_size, rank, world)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=MaskCollator(masks, cfg.train.seed),
        num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.data.num_workers > 0,
    )


class RankSlice:
    """A batch sampler yielding rank ``rank``'s rows of each global batch of ``inner``."""

    def __init__(self, inner, rank: int, world: int):
        self.inner, self.rank, self.world = inner, rank, world

    def __iter__(self):
        for batch in self.inner:
            n = len(batch) // self.world
            yield batch[self.rank * n:(self.rank + 1) * n]

    def __len__(self) -> int:
        return len(self.inner)


class RankSliceMasks:
    """A mask sampler that draws the masks of the whole global batch (as one process would) and returns
    this rank's rows."""

    def __init__(self, hier, global_batch: int, rank: int, world: int):
        self.hier, self.global_batch = hier, global_batch
        n = global_batch // world
        self.start, self.stop = rank * n, (rank + 1) * n

    def sample(self, batch: int, generator: torch.Generator) -> list[LevelMasks]:
        if batch != self.stop - self.start:
            raise ValueError(f"expected {self.stop - self.start} clips on this rank, got {batch}")
        masks = self.hier.sample(self.global_batch, generator)
        return [LevelMasks(m.context[self.start:self.stop], m.target[self.start:self.stop]) for m in masks]


def build_optimizer(model: HJEPA, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over the online parameters; no weight decay on biases, norms, tokens and loss weights
    (every tensor with fewer than 2 dimensions). Each group records whether it decays."""
    decay, no_decay = [], []
    for p in model.online_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay, "decays": True},
              {"params": no_decay, "weight_decay": 0.0, "decays": False}]
    return torch.optim.AdamW(groups, lr=peak_lr(cfg), betas=(0.9, 0.999))


def peak_lr(cfg: Config) -> float:
    """``train.lr`` is per 256 clips (the linear scaling rule)."""
    return cfg.train.lr * cfg.train.batch_size / 256


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
