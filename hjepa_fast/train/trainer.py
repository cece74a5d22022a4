"""The training loop: bottom-up, top-down, loss, step, EMA, one step after another; logs every
``train.log_every`` steps (no per-step host synchronisation) and checkpoints atomically."""
from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from hjepa_fast.builders import build_model
from hjepa_fast.checkpoint import rng_state, set_rng_state
from hjepa_fast.config import Config, ConfigError, to_dict
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.masks import LevelMasks
from hjepa_fast.metrics import feature_spread, rankme
from hjepa_fast.runs import (
    CHECKPOINT,
    RESUMABLE_CHANGES,
    RunLock,
    create_run_dir,
    has_checkpoint,
    pick_device,
    remove_stale_temporaries,
    resume_config,
    write_config,
)

from . import distributed
from .builders import count_parameters, peak_lr
from .compile import apply_compile
from .engine import build_engine
from .logging import MetricsLogger, plot_losses
from .parallelize import apply_activation_checkpointing
from .schedules import cosine, warmup_cosine

# CHECKPOINT, pick_device, resume_config and RESUMABLE_CHANGES live in hjepa_fast.runs; this module
# re-exports them for the imports that name it
__all__ = ["CHECKPOINT", "RESUMABLE_CHANGES", "train", "resume_config", "pick_device"]


def _autocast(cfg: Config, device: torch.device):
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class CollapseMonitor:
    """Collapse diagnostics of the target features, read at log steps: while armed, a forward hook on each
    level's target encoder keeps the clip averages ``[B, D]`` of its output (already computed for the
    loss). One step's batch caps RankMe at the batch size (16 at batch 16, a quarter of the tiny model's
    width), so the trainer arms the monitor for the last ``armed_steps`` steps of each log window: enough
    rows for ``ROWS_PER_DIM`` per feature dimension. ``stats()`` reduces the kept rows on the device to
    ``[2L]``: per level, the spread (``feature_spread``) and the RankMe of the clip-averaged features."""

    ROWS_PER_DIM = 4

    def __init__(self, model: nn.Module):
        self.armed = False
        self.rows: list[list[torch.Tensor]] = [[] for _ in model.target_encoders]
        self.handles = [enc.register_forward_hook(self._keep(i)) for i, enc in enumerate(model.target_encoders)]

    @classmethod
    def armed_steps(cls, width: int, rows_per_step: int, window: int) -> int:
        """Steps to keep before a log step: ``ROWS_PER_DIM * width`` rows at ``rows_per_step`` a step, at
        most the log window."""
        return max(1, min(window, math.ceil(cls.ROWS_PER_DIM * width / rows_per_step)))

    def _keep(self, level: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self.armed:
                self.rows[level].append(output.detach().float().mean(dim=1))
        return hook

    def stats(self) -> torch.Tensor:
        clip_means = [torch.cat(rows) for rows in self.rows]
        self.rows = [[] for _ in self.rows]
        return torch.stack([v for f in clip_means for v in (feature_spread(f), rankme(f))])

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume) a run; returns ``{"run_dir", "step", "losses", "finished"}`` with the logged loss
    rows (``finished``: a resumed run that had already reached ``train.steps``; nothing was trained).

    Without ``run_dir`` a new folder is made under ``train.out_dir``. Rank 0 holds the folder's lock for
    the whole run; a run that fails before it has written a metrics row or a checkpoint removes the folder
    it made. Under a launcher (torchrun, deepspeed) every rank calls this; rank 0 alone logs and writes files."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    info = distributed.setup(cfg, pick_device(cfg).type)
    created = run_dir is None and info.main
    lock = None
    try:
        if run_dir is None:
            run_dir = create_run_dir(cfg.train.out_dir, cfg.train.run_name) if info.main else None
            run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir else None, info))
        if info.main:
            held = RunLock(run_dir)
            held.acquire()
            lock = held  # from here on this process owns the folder (and may remove it after a failed start)
            remove_stale_temporaries(run_dir)
        return _train(cfg, info, run_dir, resume, progress)
    except BaseException:
        if created and lock is not None and not _has_output(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # a failed start: nothing worth keeping
        raise
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(info)


def _has_output(run_dir: Path) -> bool:
    """Whether a run has written anything a user would keep: a metrics row or a checkpoint."""
    metrics = run_dir / "metrics.csv"
    return has_checkpoint(run_dir) or (metrics.is_file() and len(metrics.read_text().splitlines()) > 1)


def _train(cfg: Config, info: distributed.DistInfo, run_dir: Path, resume: bool, progress: bool) -> dict:
    device = pick_device(cfg, info.local_rank)
    set_kernel_mode(cfg.model.kernels)
    local_rows, micro = distributed.local_batch(cfg, info)
    model = build_model(cfg).to(device)
    apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    apply_compile(model, cfg.train.compile)
    engine = build_engine(cfg, model, device, info)
    model.train()
    start = 0
    if resume and has_checkpoint(run_dir):
        meta = engine.load(run_dir)
        start = meta["step"]
        if start > cfg.train.steps:
            raise ConfigError(f"train.steps={cfg.train.steps} is below step {start}, where {run_dir} stopped")
        if start == cfg.train.steps:
            return {"run_dir": run_dir, "step": start, "losses": [], "finished": True}
        rng = meta["rng"]  # one state per rank (a list), or one state (older runs)
        set_rng_state(rng[info.rank] if isinstance(rng, list) and len(rng) == info.world else
                      rng[0] if isinstance(rng, list) else rng)
    elif resume and info.main:
        print(f"{run_dir} has no checkpoint yet: training it again from step 0", file=sys.stderr)
    if info.main:  # a resumed run's config.yaml takes its allowed changes (train.steps, ...)
        write_config(cfg, run_dir)
    ema = engine.build_ema(cfg)
    logger = MetricsLogger(run_dir, resume_step=start) if info.main else None
    loader = distributed.build_sharded_loader(cfg, info, start_step=start)
    tokens_per_clip = sum(t * h * w for t, h, w in model.grids)
    accum = cfg.train.grad_accumulation

    def checkpoint(step: int) -> None:
        engine.save(run_dir, {"step": step, "rng": distributed.gather_objects(rng_state(), info),
                              "config": to_dict(cfg), "engine": cfg.train.engine})

    bar = tqdm(total=cfg.train.steps, initial=start, disable=not (progress and info.main), dynamic_ncols=True,
               desc=f"train {count_parameters(model) / 1e6:.2f}M params")
    logged, window_start, window_clips = [], time.perf_counter(), 0
    window_losses, window_passes = None, 0  # the log window's per-micro-batch losses, summed on the device
    monitor = CollapseMonitor(model)
    armed_steps = CollapseMonitor.armed_steps(max(cfg.model.encoder_dims[:model.levels]), local_rows,
                                              cfg.train.log_every)
    done = start
    for batch in loader:
        step = batch["step"]
        lr = warmup_cosine(step, cfg.train.steps, cfg.train.warmup_steps, peak_lr(cfg), cfg.train.min_lr)
        wd = cosine(step, cfg.train.steps, cfg.train.weight_decay, cfg.train.weight_decay_end)
        engine.set_schedule(lr, wd)
        clips = batch["clips"].to(device, non_blocking=True)
        masks = [LevelMasks(m.context.to(device, non_blocking=True), m.target.to(device, non_blocking=True))
                 for m in batch["masks"]]  # pinned by the loader on CUDA: no wait for the previous step
        actions = batch["actions"].to(device, non_blocking=True) if "actions" in batch else None
        next_log = min(math.ceil((step + 1) / cfg.train.log_every) * cfg.train.log_every, cfg.train.steps)
        monitor.armed = next_log - step <= armed_steps
        for i in range(accum):  # micro-batches: rows [i*micro, (i+1)*micro) of this rank's slice
            rows = slice(i * micro, (i + 1) * micro)
            with engine.accumulating(last=i == accum - 1):
                with _autocast(cfg, device):
                    out = engine.module(clips[rows], [LevelMasks(m.context[rows], m.target[rows]) for m in masks],
                                        None if actions is None else actions[rows], step=step)
                engine.backward(out.loss)
            losses = torch.stack([out.loss.detach(), *out.level_losses, *out.level_regularizers]).float()
            window_losses = losses if window_losses is None else window_losses + losses
            window_passes += 1
        if engine.step():
            taus = ema.update(step)
        else:
            taus = ema.taus(step)
        window_clips += clips.shape[0] * info.world
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            # the loss over the window's steps, then per level the collapse diagnostics (averaged over ranks)
            values = distributed.mean_over_ranks(torch.cat([window_losses / window_passes, monitor.stats()]),
                                                 info).tolist()
            L = model.levels
            values, regs, diagnostics = values[:L + 1], values[L + 1:2 * L + 1], values[2 * L + 1:]
            elapsed = time.perf_counter() - window_start
            row = {"step": done, "loss": values[0], **{f"loss_l{i + 1}": v for i, v in enumerate(values[1:])},
                   "lr": lr, "weight_decay": wd, **{f"tau_l{i + 1}": t for i, t in enumerate(taus)},
                   "clips_per_s": window_clips / elapsed, "tokens_per_s": window_clips * tokens_per_clip / elapsed,
                   **{f"spread_l{i + 1}": v for i, v in enumerate(diagnostics[0::2])},
                   **{f"rankme_l{i + 1}": v for i, v in enumerate(diagnostics[1::2])},
                   **{f"reg_l{i + 1}": v for i, v in enumerate(regs) if model.anti_collapse.active(i)}}
            if logger is not None:
                logger.log(row)
            logged.append(row)
            bar.set_postfix({**{f"L{i + 1}": f"{row[f'loss_l{i + 1}']:.3f}" for i in range(model.levels)},
                             "clips/s": f"{row['clips_per_s']:.1f}"})
            window_start, window_clips, window_losses, window_passes = time.perf_counter(), 0, None, 0
        if done % cfg.train.ckpt_every == 0 and done != cfg.train.steps:
            checkpoint(done)
        bar.update(1)
    bar.close()
    monitor.close()
    checkpoint(done)
    if logger is not None:
        logger.close()
        plot_losses(run_dir)
    return {"run_dir": run_dir, "step": done, "losses": logged, "finished": False}
