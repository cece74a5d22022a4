"""Run folders: what a run folder holds and how a process opens one. Training writes them; evaluation,
planning and the command line read them; so this module sits below all of them (DESIGN.md).

- the file names of a run's checkpoint per engine, ``has_checkpoint`` and ``checkpoint_format``;
- ``pick_device`` (``train.device``), ``load_run`` (config and final checkpoint, for eval and plan);
- ``resume_config``: the settings a resumed run may change;
- folders that one writer owns: created atomically (``mkdir`` either makes the folder or fails, so two
  starts never share one), locked for the run's life (a second writer is refused with the holder's
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

import torch
import yaml

from hjepa_fast.checkpoint import load_checkpoint
from hjepa_fast.config import Config, ConfigError, config_from_dict, save_config, to_dict
from hjepa_fast.errors import RunFolderError

CHECKPOINT = "checkpoint.pt"  # single / ddp: one file with everything
DCP_CHECKPOINT = "checkpoint"  # fsdp: a torch.distributed.checkpoint folder (+ meta.pt)
DS_CHECKPOINT = "checkpoint_ds"  # deepspeed: DeepSpeed's own folder (+ DS_META, written last)
DS_META = "hjepa_meta.pt"
# settings a resumed run may change: they do not alter the steps already taken (a new train.steps
# stretches the schedules from here on)
RESUMABLE_CHANGES = {"train.steps", "train.log_every", "train.ckpt_every", "train.threads", "train.out_dir",
                     "train.run_name", "data.num_workers", "train.deepspeed", "train.grad_accumulation",
                     "train.activation_checkpointing", "train.compile", "train.fused_optimizer"}
# (train.engine may change where the checkpoint format is the same: single <-> ddp)


def checkpoint_format(engine: str) -> str:
    """Engines that share a format can resume each other's runs (single <-> ddp)."""
    return {"single": "torch", "ddp": "torch", "fsdp": "dcp", "deepspeed": "deepspeed"}[engine]


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint of any engine."""
    return any(p.is_file() for p in (run_dir / CHECKPOINT, run_dir / DCP_CHECKPOINT / "meta.pt",
                                     run_dir / DS_CHECKPOINT / DS_META))


def pick_device(cfg: Config, local_rank: int = 0) -> torch.device:
    """The device ``train.device`` names (``auto``: this rank's GPU where there is one, else the CPU)."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=cpu or auto")
    if cfg.train.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(f"cuda:{local_rank}" if cfg.train.device == "cuda" else cfg.train.device)


def load_run(run_dir: str | Path) -> tuple[Config, dict]:
    """A run folder's config and final checkpoint; refuses a folder that lacks either."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml")
    if not (run_dir / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoint ({CHECKPOINT}): the run has not finished a "
                                "checkpoint yet, or was trained with a sharded engine (fsdp, deepspeed)")
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    return cfg, load_checkpoint(run_dir / CHECKPOINT, expect=("model", "step"))


def _flat(tree: dict) -> dict:
    return {f"{s}.{k}": v for s, values in tree.items() for k, v in values.items()}


def resume_config(run_dir: Path, requested: Config | None) -> Config:
    """The run's own config; a requested config may differ only in RESUMABLE_CHANGES."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml")
    saved = config_from_dict(yaml.safe_load(saved_path.read_text()))
    if requested is None:
        return saved
    a, b = _flat(to_dict(saved)), _flat(to_dict(requested))
    differing = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES
                       and not (k == "train.engine" and checkpoint_format(a[k]) == checkpoint_format(b[k])))
    if differing:
        changes = ", ".join(f"{k} ({a[k]!r} -> {b[k]!r})" for k in differing)
        raise ConfigError(f"cannot resume {run_dir} with a different config: {changes}")
    for key in (*RESUMABLE_CHANGES, "train.engine"):
        section, name = key.split(".")
        setattr(getattr(saved, section), name, getattr(getattr(requested, section), name))
    return saved


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
