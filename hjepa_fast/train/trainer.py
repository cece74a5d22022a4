"""The training loop: bottom-up, top-down, loss, step, EMA, one step after another; logs every
``train.log_every`` steps (no per-step host synchronisation) and checkpoints atomically."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hjepa_fast.config import Config, ConfigError, config_from_dict, save_config, to_dict
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.masks import LevelMasks

from .builders import build_model, build_optimizer, build_train_loader, count_parameters, peak_lr
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .ema import TargetEMA
from .engine import SingleProcessEngine
from .logging import MetricsLogger, plot_losses
from .schedules import cosine, warmup_cosine

CHECKPOINT = "checkpoint.pt"
# settings a resumed run may change: they do not alter the steps already taken (a new train.steps
# stretches the schedules from here on)
RESUMABLE_CHANGES = {"train.steps", "train.log_every", "train.ckpt_every", "train.threads", "train.out_dir",
                     "train.run_name", "data.num_workers"}


def pick_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=cpu or auto")
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.train.device)


def _autocast(cfg: Config, device: torch.device):
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _flat(tree: dict) -> dict:
    return {f"{s}.{k}": v for s, values in tree.items() for k, v in values.items()}


def resume_config(run_dir: Path, requested: Config | None) -> Config:
    """The run's own config; a requested config may differ only in RESUMABLE_CHANGES."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml")
    import yaml

    saved = config_from_dict(yaml.safe_load(saved_path.read_text()))
    if requested is None:
        return saved
    a, b = _flat(to_dict(saved)), _flat(to_dict(requested))
    differing = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
    if differing:
        changes = ", ".join(f"{k} ({a[k]!r} -> {b[k]!r})" for k in differing)
        raise ConfigError(f"cannot resume {run_dir} with a different config: {changes}")
    for key in RESUMABLE_CHANGES:
        section, name = key.split(".")
        setattr(getattr(saved, section), name, getattr(getattr(requested, section), name))
    return saved


def new_run_dir(cfg: Config) -> Path:
    name = cfg.train.run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.train.out_dir) / name
    if (run_dir / CHECKPOINT).exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; resume it with --resume {run_dir} or pick another train.run_name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume) a run; returns ``{"run_dir", "step", "losses"}`` with the logged loss rows."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg)
    set_kernel_mode(cfg.model.kernels)
    run_dir = run_dir if run_dir is not None else new_run_dir(cfg)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    engine = SingleProcessEngine(model, optimizer, cfg.train.grad_clip)
    start = 0
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        engine.load_state_dict(state)
        start = state["step"]
        set_rng_state(state["rng"])
    else:
        save_config(cfg, run_dir / "config.yaml")
    targets, sources = model.ema_pairs()
    ema = TargetEMA(targets, sources, cfg.train.ema_tau_base, cfg.train.ema_tau_end, cfg.train.steps)
    logger = MetricsLogger(run_dir, resume_step=start if resume else None)
    loader = build_train_loader(cfg, start_step=start)
    tokens_per_clip = sum(t * h * w for t, h, w in model.grids)

    def checkpoint(step: int) -> None:
        save_checkpoint(run_dir / CHECKPOINT, {**engine.state_dict(), "step": step, "rng": rng_state(),
                                               "config": to_dict(cfg)})

    bar = tqdm(total=cfg.train.steps, initial=start, disable=not progress, dynamic_ncols=True,
               desc=f"train {count_parameters(model) / 1e6:.2f}M params")
    logged, window_start, window_clips = [], time.perf_counter(), 0
    done = start
    model.train()
    for batch in loader:
        step = batch["step"]
        lr = warmup_cosine(step, cfg.train.steps, cfg.train.warmup_steps, peak_lr(cfg), cfg.train.min_lr)
        wd = cosine(step, cfg.train.steps, cfg.train.weight_decay, cfg.train.weight_decay_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group["decays"] else 0.0
        clips = batch["clips"].to(device, non_blocking=True)
        masks = [LevelMasks(m.context.to(device), m.target.to(device)) for m in batch["masks"]]
        actions = batch["actions"].to(device) if "actions" in batch else None
        with _autocast(cfg, device):
            out = model(clips, masks, actions, step=step)
        engine.backward(out.loss)
        engine.step()
        taus = ema.update(step)
        window_clips += clips.shape[0]
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            elapsed = time.perf_counter() - window_start
            row = {"step": done, "loss": out.loss.item(),
                   **{f"loss_l{i + 1}": v.item() for i, v in enumerate(out.level_losses)},
                   "lr": lr, "weight_decay": wd, **{f"tau_l{i + 1}": t for i, t in enumerate(taus)},
                   "clips_per_s": window_clips / elapsed, "tokens_per_s": window_clips * tokens_per_clip / elapsed}
            logger.log(row)
            logged.append(row)
            bar.set_postfix({**{f"L{i + 1}": f"{row[f'loss_l{i + 1}']:.3f}" for i in range(model.levels)},
                             "clips/s": f"{row['clips_per_s']:.1f}"})
            window_start, window_clips = time.perf_counter(), 0
        if done % cfg.train.ckpt_every == 0 and done != cfg.train.steps:
            checkpoint(done)
        bar.update(1)
    bar.close()
    checkpoint(done)
    logger.close()
    plot_losses(run_dir)
    return {"run_dir": run_dir, "step": done, "losses": logged}
