"""The training-only builders: the step-seeded data loader (sharded over ranks) and the optimiser. The
model, data sets and mask sampler come from ``hjepa_fast.builders``, re-exported here for the imports
that name this module."""
from __future__ import annotations

import torch
from torch import nn

from hjepa_fast.builders import build_dataset_for, build_mask_sampler, build_model
from hjepa_fast.config import Config
from hjepa_fast.data import StepBatchSampler
from hjepa_fast.masks import LevelMasks, MaskCollator
from hjepa_fast.model.hjepa import HJEPA

__all__ = ["RankSlice", "RankSliceMasks", "build_dataset_for", "build_mask_sampler", "build_model",
           "build_optimizer", "build_train_loader", "count_parameters", "peak_lr"]


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


# where torch has a fused AdamW (CPU since torch 2.4)
FUSED_ADAMW_DEVICES = {"cuda", "cpu"}


def build_optimizer(model: HJEPA, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over the online parameters; no weight decay on biases, norms, tokens and loss weights
    (every tensor with fewer than 2 dimensions). Each group records whether it decays. With
    ``train.fused_optimizer``, one process or DDP, and every parameter on one device type that torch
    fuses AdamW on (CUDA or CPU), the fused implementation (a few kernels per step instead of a launch
    series per tensor group; on CPU 6x faster than the per-tensor loop for the tiny model); elsewhere
    torch's default. Both keep the same state, so a run resumes under either."""
    decay, no_decay = [], []
    for p in model.online_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay, "decays": True},
              {"params": no_decay, "weight_decay": 0.0, "decays": False}]
    device_types = {p.device.type for p in decay + no_decay}
    fused = (cfg.train.fused_optimizer and cfg.train.engine in ("single", "ddp") and len(device_types) == 1
             and device_types <= FUSED_ADAMW_DEVICES)
    return torch.optim.AdamW(groups, lr=peak_lr(cfg), betas=(0.9, 0.999), **({"fused": True} if fused else {}))


def peak_lr(cfg: Config) -> float:
    """``train.lr`` is per 256 clips (the linear scaling rule)."""
    return cfg.train.lr * cfg.train.batch_size / 256


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
