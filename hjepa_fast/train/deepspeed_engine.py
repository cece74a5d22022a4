"""The DeepSpeed engine (ZeRO stage 1/2/3 from a JSON in configs/), an optional dependency.

EMA targets stay *outside* the DeepSpeed engine, in fp32, never trained (FACTS §4: inside the engine
DeepSpeed would cast them, and under ZeRO-3 writes to gathered parameters are lost). Every rank holds the
whole target and moves it toward the online encoder once per applied optimiser step; under ZeRO-3 the
online parameters are read through a read-only gather, level by level.

Precision: the engine keeps fp32 master *and* module weights (no "bf16"/"fp16" block in the JSON); bf16
comes from the trainer's autocast (``train.precision=bf16``), as with every other engine.
Checkpoints: DeepSpeed's own format in ``checkpoint_ds/<tag>/``, plus ``checkpoint_ds/hjepa_meta.pt``
(step, RNG, targets), written last and atomically; it names the tag to resume from.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from hjepa_fast.checkpoint import load_checkpoint, save_checkpoint
from hjepa_fast.config import Config, ConfigError
from hjepa_fast.kernels import EMASchedule, ema_update_
from hjepa_fast.model.hjepa import level_parameters
from hjepa_fast.runs import DS_CHECKPOINT, DS_META

from .builders import build_optimizer
from .distributed import DistInfo, barrier, local_batch
from .parallelize import detach_targets

INSTALL = "pip install 'hjepa_fast[deepspeed]'   (or: pip install deepspeed)"


class MissingDependencyError(ConfigError):
    """An optional dependency a setting needs is not installed; the message says how to install it."""


def require_deepspeed():
    """``import deepspeed`` or a clear message with the install command."""
    try:
        import deepspeed
    except ImportError as e:
        raise MissingDependencyError(
            f"train.engine=deepspeed needs DeepSpeed, which is not installed ({e}). Install it with:\n    "
            f"{INSTALL}\nThe other engines (train.engine=single, ddp, fsdp) work without it."
        ) from None
    return deepspeed


def deepspeed_config(cfg: Config, info: DistInfo) -> dict:
    """The JSON at ``train.deepspeed`` with the batch sizes filled in from our config."""
    path = Path(cfg.train.deepspeed)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: DeepSpeed config not found: {path}")
    try:
        conf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON: {e}") from None
    for key in ("optimizer", "scheduler"):
        if key in conf:
            raise ConfigError(f"{path}: remove '{key}': hjepa builds AdamW and schedules lr and weight decay "
                              "itself (train.lr, train.weight_decay, ...)")
    for key in ("bf16", "fp16"):
        if conf.get(key, {}).get("enabled", False) not in (False, "auto"):
            raise ConfigError(f"{path}: '{key}.enabled' casts every parameter in the engine; keep fp32 weights "
                              "and use train.precision=bf16 (autocast) instead")
    _, micro = local_batch(cfg, info)
    wanted = {"train_batch_size": cfg.train.batch_size, "train_micro_batch_size_per_gpu": micro,
              "gradient_accumulation_steps": cfg.train.grad_accumulation,
              # DeepSpeed clips at norm 1.0 unless told otherwise: ours is train.grad_clip (0: off)
              "gradient_clipping": float(cfg.train.grad_clip)}
    for key, value in wanted.items():
        if conf.get(key, "auto") not in ("auto", value):
            raise ConfigError(f"{path}: {key}={conf[key]} disagrees with the run ({value}, from train.batch_size "
                              f"{cfg.train.batch_size}, {info.world} ranks, train.grad_accumulation, "
                              'train.grad_clip); set it to "auto"')
        conf[key] = value
    conf.setdefault("steps_per_print", 10**9)
    return conf


class DeepSpeedTargetEMA:
    """Per-level EMA (``train.ema_schedule``) of fp32 targets kept outside the engine toward the engine's
    online encoders."""

    def __init__(self, targets: torch.nn.ModuleList, sources: torch.nn.ModuleList, zero3: bool, cfg: Config):
        # each parameter once, in the lowest level holding it (model.share_encoders: level 1's blocks)
        self.targets, self.sources = level_parameters(targets), level_parameters(sources)
        self.zero3 = zero3
        self.schedule = EMASchedule(cfg.train.ema_tau_base, cfg.train.ema_tau_end, cfg.train.steps,
                                    cfg.train.ema_schedule)

    def taus(self, step: int) -> list[float]:
        return self.schedule.taus(step)

    @torch.no_grad()
    def update(self, step: int) -> list[float]:
        taus = self.taus(step)
        if not self.zero3:
            ema_update_(self.targets, [[p.data for p in g] for g in self.sources], taus)
            return taus
        import deepspeed

        for tg, sg, tau in zip(self.targets, self.sources, taus):
            with deepspeed.zero.GatheredParameters(sg, modifier_rank=None):  # read-only: nothing written back
                ema_update_(tg, [p.data for p in sg], tau)
        return taus


class DeepSpeedEngine:
    """deepspeed.initialize over the online model and our AdamW; ZeRO stage from the JSON."""

    name = "deepspeed"

    def __init__(self, cfg: Config, model, device: torch.device, info: DistInfo):
        deepspeed = require_deepspeed()
        self.info, self.model, self.cfg = info, model, cfg
        self.targets = detach_targets(model).to(device)
        self.conf = deepspeed_config(cfg, info)
        optimizer = build_optimizer(model, cfg)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.conf)
        self.stage = self.ds.zero_optimization_stage()
        self.accum, self._micro = cfg.train.grad_accumulation, 0

    @property
    def module(self):
        return self.ds

    def set_schedule(self, lr: float, wd: float) -> None:
        for i, group in enumerate(self.ds.optimizer.param_groups):
            group["lr"] = lr
            group["weight_decay"] = wd if group.get("decays", i == 0) else 0.0

    def accumulating(self, last: bool):
        import contextlib

        return contextlib.nullcontext()  # DeepSpeed counts micro-batches itself

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)  # scales by 1 / gradient_accumulation_steps
        self._micro += 1
        if self._micro < self.accum:
            self.ds.step()  # bookkeeping only: not an accumulation boundary

    def step(self) -> bool:
        self.ds.step()
        self._micro = 0
        return bool(self.ds.was_step_applied())

    def build_ema(self, cfg: Config) -> DeepSpeedTargetEMA:
        self.targets.train(self.model.training)
        return DeepSpeedTargetEMA(self.targets, self.model.encoders, self.stage == 3, cfg)

    def save(self, run_dir: Path, meta: dict[str, Any]) -> None:
        folder, tag = run_dir / DS_CHECKPOINT, f"step{meta['step']}"
        self.ds.save_checkpoint(str(folder), tag=tag, save_latest=False)
        barrier(self.info)
        if self.info.main:
            save_checkpoint(folder / DS_META, {**meta, "tag": tag, "world_size": self.info.world,
                                               "zero_stage": self.stage, "targets": self.targets.state_dict()})
            for old in folder.iterdir():  # the meta now names the new tag: older ones may go
                if old.is_dir() and old.name.startswith("step") and old.name not in (tag, f"{tag}_universal"):
                    shutil.rmtree(old, ignore_errors=True)
        barrier(self.info)

    def load(self, run_dir: Path) -> dict[str, Any]:
        folder = run_dir / DS_CHECKPOINT
        meta = load_checkpoint(folder / DS_META, expect=("step", "rng", "tag", "world_size", "targets"))
        universal = bool(self.conf.get("checkpoint", {}).get("load_universal", False))
        tag = f"{meta['tag']}_universal" if universal else meta["tag"]
        if meta["world_size"] != self.info.world and not universal:
            raise ConfigError(
                f"{folder} was saved by DeepSpeed on {meta['world_size']} ranks; this run has {self.info.world}. "
                "ZeRO checkpoints load on another number of ranks only as a universal checkpoint:\n"
                f"    python -m deepspeed.checkpoint.ds_to_universal --input_folder {folder / meta['tag']} "
                f"--output_folder {folder / tag}_universal --inject_missing_state\n"
                'then add "checkpoint": {"load_universal": true} to your DeepSpeed JSON and resume again '
                f"(or resume on {meta['world_size']} ranks)."
            )
        if not (folder / tag).is_dir():
            raise FileNotFoundError(f"DeepSpeed checkpoint {folder / tag} is missing"
                                    + (" (convert it with deepspeed.checkpoint.ds_to_universal)" if universal else ""))
        self.ds.load_checkpoint(str(folder), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False)
        self.targets.load_state_dict(meta["targets"])
        return {k: v for k, v in meta.items() if k not in ("targets",)}
