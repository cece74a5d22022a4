"""Run folders that one writer owns: created atomically (``mkdir`` either makes the folder or fails, so
two starts never share one), locked for the run's life (a second writer is refused with the holder's
name), cleaned of temporary files a killed writer left behind.

The lock is ``fcntl.flock`` on ``RUN/.lock``: the kernel drops it when its holder exits, however it
exits, so a crashed run never leaves a stale lock. It needs a file system with working ``flock`` (local
disks do; some network file systems do not).
"""
from __future__ import annotations

import fcntl
import itertools
import os
import socket
import sys
import time
from pathlib import Path

from hjepa_fast.config import Config, save_config
from hjepa_fast.errors import RunFolderError

from .engine import has_checkpoint

LOCK = ".lock"


def create_run_dir(out_dir: str | Path, run_name: str) -> Path:
    """A new, empty folder ``out_dir/run_name``, or ``out_dir/<time stamp>[-n]`` without a name (the first
    free ``n``, so starts within one second get distinct folders). An existing named folder is refused."""
    out_dir = Path(out_dir)
    if run_name:
        run_dir = out_dir / run_name
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_dir.mkdir()
        except FileExistsError:
            what = ("already holds a run" if has_checkpoint(run_dir) else
                    "already exists (a run that stopped before its first checkpoint, or one still starting)")
            raise RunFolderError(f"{run_dir} {what}; resume it with --resume {run_dir} or pick another "
                                 "train.run_name") from None
        return run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        run_dir = out_dir / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir


class RunLock:
    """An exclusive lock on a run folder, held from ``acquire`` until ``release`` (or the process's end)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``RunFolderError`` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text().strip() or "a process that has not written its name yet"
            os.close(fd)
            raise RunFolderError(f"{self.path.parent} is in use by another run ({holder}); wait for it to end "
                                 "or pick another train.run_name") from None
        command = " ".join(["hjepa", *sys.argv[1:]]) if sys.argv else "python"
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{command}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the ``.NAME.tmp-PID`` files of checkpoint writes that never finished (in the run folder and
    its checkpoint folders); call it holding the lock, when no writer can be mid-write. Returns them."""
    run_dir = Path(run_dir)
    stale = [p for p in (*run_dir.glob(".*.tmp-*"), *run_dir.glob("*/.*.tmp-*")) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_config(cfg: Config, run_dir: str | Path) -> None:
    """``run_dir/config.yaml``, replaced atomically (a resume rewrites it: a crash must not leave half)."""
    path = Path(run_dir) / "config.yaml"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_config(cfg, tmp)
    os.replace(tmp, path)
