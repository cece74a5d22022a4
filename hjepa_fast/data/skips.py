"""The files a data set skips (unreadable or too short): each logged once, and a run stopped past a fraction.

Over a 48-hour job on a million files a few bad ones are expected; a run should lose their clips, not the
job. Too many bad files, though, mean a wrong folder or a broken copy, and training on what is left would
hide it: past ``max_fraction`` of the files the run stops with an error that names the setting.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.context import get_spawning_popen
from typing import Any

import torch

from hjepa_fast.errors import DataError

log = logging.getLogger("hjepa_fast.data")


class SkippedFiles:
    """Which of a data set's ``count`` files were skipped, shared by the processes that read it.

    The flags live in shared memory and are set under a lock, so DataLoader workers (forked, or spawned:
    both are handed the same memory and lock) agree: each file is logged once by the first process that
    skips it, and the fraction counts every worker's skips. A plain pickle (not a worker start) gets a
    copy of the flags with its own lock."""

    def __init__(self, count: int, root: str, max_fraction: float) -> None:
        if not 0 <= max_fraction <= 1:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        self.count, self.root, self.max_fraction = count, root, max_fraction
        self._flags = torch.zeros(count, dtype=torch.bool).share_memory_()
        self._lock: Any = _new_lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if get_spawning_popen() is None:  # not a process start: a lock cannot travel, the copy makes its own
            state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._lock is None:
            self._lock = _new_lock()

    def __contains__(self, index: int) -> bool:
        return bool(self._flags[index])

    def __len__(self) -> int:
        return int(self._flags.sum())

    def skip(self, index: int, reason: str) -> None:
        """Mark file ``index`` skipped for ``reason`` (which names the file); log it the first time.

        Raises DataError where no file is left, or where more than ``max_fraction`` of them are skipped."""
        with self._lock:
            first = not self._flags[index]
            self._flags[index] = True
            skipped = int(self._flags.sum())
        if first:
            log.warning("skipping a video (%d of %d skipped so far): %s", skipped, self.count, reason)
        self._check(reason)

    def _check(self, last: str) -> None:
        """Raise DataError if every file, or more than ``max_fraction`` of them, is skipped (``last``: the
        latest reason, for the message)."""
        skipped = len(self)
        if skipped == self.count:
            raise NoUsableVideoError(f"no video under {self.root!r} decodes or is long enough; last: {last}")
        if skipped > self.max_fraction * self.count:
            raise DataError(
                f"{skipped} of {self.count} videos under {self.root!r} ({skipped / self.count:.1%}) are skipped, "
                f"more than data.max_bad_fraction={self.max_fraction}; last: {last}. Remove or re-encode them, "
                "or raise data.max_bad_fraction"
            )


def _new_lock() -> Any:
    """A lock that forked, spawned and forkserver workers can all share: one made in the default (fork)
    context refuses to be sent to spawned workers (DataLoader(multiprocessing_context="spawn"))."""
    return multiprocessing.get_context("spawn").Lock()


class NoUsableVideoError(DataError, RuntimeError):
    """Every file of a data set is skipped."""
