"""Engines wrap a finished model and its optimiser: forward module, backward, step, state save/load.

The trainer drives every engine the same way::

    engine.set_schedule(lr, wd)
    for each micro-batch:
        with engine.accumulating(last):      # no gradient sync before the last micro-batch
            out = engine.module(clips, masks, actions, step=step)
            engine.backward(out.loss)        # scaled by 1 / grad_accumulation
    applied = engine.step()                  # True when the optimiser step was taken
    if applied: ema.update(step)

Here: one process, torch DDP, FSDP2 (``fully_shard``). DeepSpeed lives in ``deepspeed_engine.py`` (an
optional dependency). ``build_engine`` picks one from ``train.engine``.
"""
from __future__ import annotations

import contextlib
import inspect
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hjepa_fast.checkpoint import dcp_load, load_checkpoint, load_model_state, save_checkpoint
from hjepa_fast.config import Config, ConfigError
from hjepa_fast.errors import CheckpointError
from hjepa_fast.model.hjepa import HJEPA
from hjepa_fast.runs import CHECKPOINT, DCP_CHECKPOINT, checkpoint_format, checkpoint_layout, has_checkpoint

from .builders import build_optimizer
from .distributed import DistInfo, barrier
from .ema import TargetEMA

# the run folder's file names and checks live in hjepa_fast.runs; re-exported for the imports that name them
__all__ = ["CHECKPOINT", "DCP_CHECKPOINT", "DDPEngine", "FSDPEngine", "SingleProcessEngine", "build_engine",
           "checkpoint_format", "has_checkpoint"]


class SingleProcessEngine:
    """One process, one device. Checkpoint: ``checkpoint.pt`` (model with targets, optimiser, meta)."""

    name = "single"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                 grad_accumulation: int = 1, info: DistInfo | None = None):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.grad_accumulation, self.info = grad_accumulation, info or DistInfo()

    @property
    def module(self) -> nn.Module:
        """What the trainer calls for the forward pass."""
        return self.model

    def set_schedule(self, lr: float, wd: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group["decays"] else 0.0

    def accumulating(self, last: bool):
        """Context for one micro-batch's forward and backward; ``last``: gradients sync after this one."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accumulation if self.grad_accumulation > 1 else loss).backward()

    def step(self) -> bool:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def build_ema(self, cfg: Config) -> TargetEMA:
        targets, sources = self.model.ema_pairs()
        return TargetEMA(targets, sources, cfg.train.ema_tau_base, cfg.train.ema_tau_end, cfg.train.steps,
                         cfg.train.ema_schedule)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def save(self, run_dir: Path, meta: dict[str, Any]) -> None:
        """Every rank calls it; rank 0 writes ``checkpoint.pt`` atomically (replicas hold equal states)."""
        if self.info.main:
            save_checkpoint(run_dir / CHECKPOINT, {**self.state_dict(), **meta})
        barrier(self.info)

    def load(self, run_dir: Path) -> dict[str, Any]:
        """Restore model and optimiser from ``run_dir``'s newest checkpoint; return the rest (step, rng,
        config). ``checkpoint.pt`` (single, ddp) is a full state: it resumes on any number of processes; an
        FSDP folder (``checkpoint/``) loads too, resharded to full tensors (a change of train.engine)."""
        layout = checkpoint_layout(run_dir)
        if layout == "dcp":
            return self._load_dcp(run_dir)
        if layout == "deepspeed":
            raise ConfigError(DEEPSPEED_ONLY.format(run_dir=run_dir, engine=self.name))
        return self._load_full(run_dir)

    def _load_dcp(self, run_dir: Path) -> dict[str, Any]:
        """Model and optimiser from a ``torch.distributed.checkpoint`` folder, resharded to this engine's
        layout (any number of ranks; full tensors for an unsharded model)."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        folder = run_dir / DCP_CHECKPOINT
        if not (folder / "meta.pt").is_file():
            raise FileNotFoundError(f"no FSDP checkpoint (torch.distributed.checkpoint folder) at {folder}")
        meta = load_checkpoint(folder / "meta.pt", expect=("step", "rng"))  # first: a bad one stops here
        states = self._states()
        dcp_load(states, folder)  # safe reads (checkpoint.dcp_load); reshards: any number of ranks
        set_state_dict(self.model, self.optimizer, model_state_dict=states["model"],
                       optim_state_dict=states["optimizer"])
        return meta

    def _states(self):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def _load_full(self, run_dir: Path) -> dict[str, Any]:
        path = run_dir / CHECKPOINT
        state = load_checkpoint(path, expect=("model", "optimizer", "step", "rng"))
        load_model_state(self.model, state, path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: its optimiser state does not fit this model ({e})") from None
        return {k: v for k, v in state.items() if k not in ("model", "optimizer")}


class DDPEngine(SingleProcessEngine):
    """torch DistributedDataParallel: replicas, gradients averaged over ranks in backward."""

    name = "ddp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, **kw):
        super().__init__(model, optimizer, **kw)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # no buffer sync per forward: the only buffers are fixed position tables, equal on every rank
        new_api = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers": False} if new_api else {"broadcast_buffers": False}
        self.ddp = DistributedDataParallel(model, device_ids=ids, **sync)

    @property
    def module(self) -> nn.Module:
        return self.ddp

    def accumulating(self, last: bool):
        return contextlib.nullcontext() if last else self.ddp.no_sync()


class FSDPEngine(SingleProcessEngine):
    """FSDP2: parameters, gradients and optimiser state sharded over ranks (``parallelize.apply_fsdp``).
    Checkpoint: a ``torch.distributed.checkpoint`` folder, which reloads on any number of ranks."""

    name = "fsdp"

    @property
    def module(self) -> nn.Module:
        return self.model

    def accumulating(self, last: bool):
        self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def build_ema(self, cfg: Config) -> TargetEMA:
        with warnings.catch_warnings():  # sharded parameters: MultiLevelEMA lerps the local shards
            warnings.filterwarnings("ignore", message="MultiLevelEMA: parameters are sharded")
            return super().build_ema(cfg)

    def save(self, run_dir: Path, meta: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp

        final, tmp = run_dir / DCP_CHECKPOINT, run_dir / f".{DCP_CHECKPOINT}.tmp"
        if self.info.main:
            shutil.rmtree(tmp, ignore_errors=True)
        barrier(self.info)
        dcp.save(self._states(), checkpoint_id=str(tmp))
        if self.info.main:  # meta last, then swap folders: a crash leaves the previous checkpoint whole
            save_checkpoint(tmp / "meta.pt", {**meta, "world_size": self.info.world})
            old = run_dir / f".{DCP_CHECKPOINT}.old"
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        barrier(self.info)

    def load(self, run_dir: Path) -> dict[str, Any]:
        """The FSDP folder (``checkpoint/``), or a full ``checkpoint.pt`` of a single/ddp run (a change of
        train.engine): every rank reads the whole file and keeps its shards."""
        layout = checkpoint_layout(run_dir)
        if layout == "torch":
            return self._load_sharding(run_dir)
        if layout == "deepspeed":
            raise ConfigError(DEEPSPEED_ONLY.format(run_dir=run_dir, engine=self.name))
        return self._load_dcp(run_dir)

    def _load_sharding(self, run_dir: Path) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        path = run_dir / CHECKPOINT
        state = load_checkpoint(path, expect=("model", "optimizer", "step", "rng"))
        # the optimiser state of checkpoint.pt counts parameters 0, 1, ... in param_groups order; the
        # sharded model's parameters have the same names, in the same order: key the state by name
        names = {id(p): n for n, p in self.model.named_parameters()}
        order = [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]
        saved = state["optimizer"]
        try:
            optim = {"state": {order[i]: v for i, v in saved["state"].items()},
                     "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]}
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=optim,
                           options=StateDictOptions(full_state_dict=True))
        except (IndexError, KeyError, TypeError, ValueError, RuntimeError) as e:
            reason = " ".join(str(e).strip().splitlines()[:2])[:300] or type(e).__name__
            raise CheckpointError(f"{path} does not fit the model of the run's config.yaml: {reason}") from None
        return {k: v for k, v in state.items() if k not in ("model", "optimizer")}


DEEPSPEED_ONLY = ("{run_dir} holds a DeepSpeed checkpoint: its optimiser state is DeepSpeed's own, so only "
                  "train.engine=deepspeed resumes it (train.engine={engine} cannot). To start a new run from its "
                  "weights, read them with `hjepa export` or hjepa_fast.runs.load_run_state")


def build_engine(cfg: Config, model: HJEPA, device: torch.device, info: DistInfo):
    """Parallelise ``model`` (already on ``device``, activation checkpointing already applied) for
    ``train.engine``, build its optimiser, and return the engine."""
    kw = {"grad_clip": cfg.train.grad_clip, "grad_accumulation": cfg.train.grad_accumulation, "info": info}
    name = cfg.train.engine
    if name == "single":
        return SingleProcessEngine(model, build_optimizer(model, cfg), **kw)
    if name == "ddp":
        return DDPEngine(model, build_optimizer(model, cfg), device, **kw)
    if name == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        from .parallelize import apply_fsdp

        apply_fsdp(model, init_device_mesh(device.type, (info.world,)))
        return FSDPEngine(model, build_optimizer(model, cfg), **kw)  # optimiser over the sharded parameters
    if name == "deepspeed":
        from .deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, model, device, info)
    raise ValueError(f"unknown engine {name!r}")
