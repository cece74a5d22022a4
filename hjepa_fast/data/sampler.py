"""Deterministic, resumable batch sampler keyed by global step."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepBatchSampler:
    """Batch sampler for `DataLoader(batch_sampler=...)` yielding `[(index, step), ...]` per step.

    Global sample position p = step * batch_size + j reads position p % dataset_len of the epoch
    p // dataset_len, whose permutation is seeded by (seed, epoch) alone. Batches are therefore a pure
    function of the step: starting at `start_step` reproduces exactly what an uninterrupted run would
    have drawn from that step on, which is how training resumes. A batch may straddle epochs.
    `total_steps` counts the steps to yield (steps start_step .. start_step + total_steps - 1), so a run
    resumed at step k of N passes N - k; None means infinite.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        total_steps: int | None = None,
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
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """Index order int64 [dataset_len] of `epoch`; only the latest two epochs are kept in memory."""
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.dataset_len, generator=gen)
            for old in [e for e in self._perms if e < epoch - 1]:
                del self._perms[old]
        return self._perms[epoch]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The batch of `step`: batch_size pairs (dataset index, step)."""
        out: list[tuple[int, int]] = []
        pos = step * self.batch_size
        end = pos + self.batch_size
        while pos < end:  # one pass per epoch the batch touches
            epoch, offset = divmod(pos, self.dataset_len)
            take = min(end - pos, self.dataset_len - offset)
            out.extend((i, step) for i in self.permutation(epoch)[offset : offset + take].tolist())
            pos += take
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.total_steps is None or step < self.start_step + self.total_steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("StepBatchSampler with total_steps=None is infinite and has no length")
        return self.total_steps
