"""Deterministic, resumable batch sampler keyed by global step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch


class SampleKey(NamedTuple):
    """What a data set item is a function of (with the data set's seed).

    ``index``: the item (video) to read; ``step``: the training step; ``slot``: the position in the global
    batch (the same on every rank and worker layout); ``part`` of ``parts``: which equal part of the video
    the clip comes from (``clips_per_video`` > 1), else 0 of 1. A plain ``(index, step)`` tuple means slot 0,
    part 0 of 1 (how evaluation reads items)."""

    index: int
    step: int
    slot: int = 0
    part: int = 0
    parts: int = 1


class StepBatchSampler:
    """Batch sampler for `DataLoader(batch_sampler=...)` yielding a list of `SampleKey` per step.

    Global sample position p = step * batch_size + j visits v = p // clips_per_video, which reads position
    v % dataset_len of the epoch v // dataset_len, whose permutation is seeded by (seed, epoch) alone; with
    `clips_per_video` = k each visit is k consecutive positions, parts 0 .. k-1 of the same video (V-JEPA's
    several clips per video). Batches are therefore a pure function of the step: starting at `start_step`
    reproduces exactly what an uninterrupted run would have drawn from that step on, which is how training
    resumes. A batch may straddle epochs. `total_steps` counts the steps to yield (steps start_step ..
    start_step + total_steps - 1), so a run resumed at step k of N passes N - k; None means infinite.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        total_steps: int | None = None,
        clips_per_video: int = 1,
    ) -> None:
        if dataset_len < 1:
            raise ValueError(f"dataset_len must be >= 1, got {dataset_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if total_steps is not None and total_steps < 0:
            raise ValueError(f"total_steps must be >= 0 or None, got {total_steps}")
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.clips_per_video = clips_per_video
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """Index order int64 [dataset_len] of `epoch`; only the latest two epochs are kept in memory."""
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.dataset_len, generator=gen)
            for old in [e for e in self._perms if e < epoch - 1]:
                del self._perms[old]
        return self._perms[epoch]

    def batch(self, step: int) -> list[SampleKey]:
        """The batch of `step`: batch_size keys, in global-batch order."""
        k = self.clips_per_video
        first, last = step * self.batch_size // k, ((step + 1) * self.batch_size - 1) // k  # visits touched
        videos: list[int] = []
        visit = first
        while visit <= last:  # one pass per epoch the batch touches
            epoch, offset = divmod(visit, self.dataset_len)
            take = min(last + 1 - visit, self.dataset_len - offset)
            videos.extend(self.permutation(epoch)[offset : offset + take].tolist())
            visit += take
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [SampleKey(videos[p // k - first], step, j, p % k, k) for j, p in enumerate(positions)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        step = self.start_step
        while self.total_steps is None or step < self.start_step + self.total_steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("StepBatchSampler with total_steps=None is infinite and has no length")
        return self.total_steps
