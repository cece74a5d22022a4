"""Run folders: what a run folder holds and how a process opens one. Training writes them; evaluation,
planning and the command line read them; so this module sits below all of them (DESIGN.md).

- the file names of a run's checkpoint per engine, ``has_checkpoint``, ``checkpoint_format`` and
  ``checkpoint_layout`` (which format a folder holds);
- ``load_run_state``: the consolidated model state dict of a run, whichever engine wrote it (one file,
  an FSDP ``torch.distributed.checkpoint`` folder, a DeepSpeed folder); ``load_run`` (config and that
  state, for eval, plan and export); ``pick_device`` (``train.device``);
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

from hjepa_fast.checkpoint import load_checkpoint, load_dcp_model, load_deepspeed_model
from hjepa_fast.config import Config, ConfigError, config_from_dict, save_config, to_dict
from hjepa_fast.errors import CheckpointError, RunFolderError

CHECKPOINT = "checkpoint.pt"  # single / ddp: one file with everything
DCP_CHECKPOINT = "checkpoint"  # fsdp: a torch.distributed.checkpoint folder (+ meta.pt)
DS_CHECKPOINT = "checkpoint_ds"  # deepspeed: DeepSpeed's own folder (+ DS_META, written last)
DS_META = "hjepa_meta.pt"
# settings a resumed run may change: they do not alter the steps already taken (a new train.steps
# stretches the schedules from here on)
RESUMABLE_CHANGES = {"train.steps", "train.log_every", "train.ckpt_every", "train.threads", "train.out_dir",
                     "train.run_name", "data.num_workers", "train.deepspeed", "train.grad_accumulation",
                     "train.activation_checkpointing", "train.compile", "train.fused_optimizer"}
# (train.engine may change where the new engine reads the run's checkpoint: can_resume_across)


def checkpoint_format(engine: str) -> str:
    """The format an engine writes: ``torch`` (one file), ``dcp`` or ``deepspeed``."""
    return {"single": "torch", "ddp": "torch", "fsdp": "dcp", "deepspeed": "deepspeed"}[engine]


def can_resume_across(saved_engine: str, engine: str) -> bool:
    """Whether ``engine`` resumes a run of ``saved_engine`` exactly (model, optimiser, RNG): engines of
    one format, and single/ddp <-> fsdp (each reads the other's format); DeepSpeed's optimiser state is
    its own, so a DeepSpeed run resumes under DeepSpeed only."""
    formats = {checkpoint_format(saved_engine), checkpoint_format(engine)}
    return len(formats) == 1 or formats == {"torch", "dcp"}


# each format's marker: the file its engine writes last, so its presence means a complete checkpoint
LAYOUTS = {"torch": CHECKPOINT, "dcp": f"{DCP_CHECKPOINT}/meta.pt", "deepspeed": f"{DS_CHECKPOINT}/{DS_META}"}
LAYOUT_ENGINES = {"torch": "train.engine=single or ddp", "dcp": "train.engine=fsdp",
                  "deepspeed": "train.engine=deepspeed"}


def checkpoint_layout(run_dir: str | Path) -> str | None:
    """The format of ``run_dir``'s newest complete checkpoint: ``torch``, ``dcp`` or ``deepspeed`` (None:
    no complete checkpoint). A run resumed under an engine of another format holds two: the newer wins."""
    found = [(marker.stat().st_mtime_ns, layout) for layout, name in LAYOUTS.items()
             if (marker := Path(run_dir) / name).is_file()]
    return max(found)[1] if found else None


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint of any engine."""
    return checkpoint_layout(run_dir) is not None


def checkpoint_path(run_dir: str | Path, layout: str) -> Path:
    """The file (``torch``) or folder (``dcp``, ``deepspeed``) of a checkpoint of ``layout`` in ``run_dir``."""
    return Path(run_dir) / {"torch": CHECKPOINT, "dcp": DCP_CHECKPOINT, "deepspeed": DS_CHECKPOINT}[layout]


def _no_checkpoint(run_dir: Path) -> Exception:
    """The one-line error for a run folder without a complete checkpoint of a known format."""
    partial = [name for name in (DCP_CHECKPOINT, DS_CHECKPOINT) if (run_dir / name).is_dir()]
    if partial:
        marker = {DCP_CHECKPOINT: "meta.pt", DS_CHECKPOINT: DS_META}[partial[0]]
        return CheckpointError(f"{run_dir / partial[0]} is not a checkpoint hjepa_fast can read: it lacks "
                               f"{marker}, which the engine writes last (an unfinished write, or another program's)")
    expected = ", ".join(f"{name} ({LAYOUT_ENGINES[layout]})" for layout, name in LAYOUTS.items())
    return FileNotFoundError(f"{run_dir} has no checkpoint: the run has not finished one yet (expected one of "
                             f"{expected})")


def load_run_state(run_dir: str | Path) -> dict:
    """The run's newest checkpoint as ``{"model": state dict, "step", "layout", "path"}``, whichever engine
    wrote it. ``model`` is consolidated (full tensors, on the CPU) and has ``HJEPA.state_dict()``'s keys,
    EMA targets included (``target_encoders.*``): it loads into ``build_model(cfg)`` with a strict
    ``load_state_dict``. ``path``: the checkpoint's file or folder, for messages.

    Every file is opened safely (``checkpoint.load_checkpoint`` and friends); a missing, unknown, corrupt or
    crafted checkpoint is refused in one line. DeepSpeed ZeRO-3 needs ``deepspeed`` installed."""
    run_dir = Path(run_dir)
    layout = checkpoint_layout(run_dir)
    if layout is None:
        raise _no_checkpoint(run_dir)
    path = checkpoint_path(run_dir, layout)
    if layout == "torch":
        state = load_checkpoint(path, expect=("model", "step"))
        model = state["model"]
    elif layout == "dcp":
        state = load_checkpoint(path / "meta.pt", expect=("step",))  # first: a bad one stops here
        model = load_dcp_model(path, "model")
    else:
        state = load_checkpoint(path / DS_META, expect=("step", "tag", "targets"))
        model = load_deepspeed_model(path, state["tag"], state.get("zero_stage"))
        model.update({f"target_encoders.{k}": v for k, v in state["targets"].items()})
    return {"model": model, "step": state["step"], "layout": layout, "path": path}


def pick_device(cfg: Config, local_rank: int = 0) -> torch.device:
    """The device ``train.device`` names (``auto``: this rank's GPU where there is one, else the CPU)."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=cpu or auto")
    if cfg.train.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(f"cuda:{local_rank}" if cfg.train.device == "cuda" else cfg.train.device)


def read_run_config(run_dir: str | Path) -> Config:
    """A run folder's ``config.yaml``; refuses a missing folder or one that is not a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml")
    return config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))


def load_run(run_dir: str | Path) -> tuple[Config, dict]:
    """A run folder's config and newest checkpoint (``load_run_state``: any engine's, consolidated);
    refuses a folder that lacks either."""
    cfg = read_run_config(run_dir)
    return cfg, load_run_state(run_dir)


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
                       and not (k == "train.engine" and can_resume_across(a[k], b[k])))
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
