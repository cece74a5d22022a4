"""Every setting of hjepa_fast in one typed tree, loaded from YAML and overridden with ``a.b.c=value``.

Unknown keys and wrong types are refused with a message that names the key. Per-level settings are
lists; a run with ``model.levels=L`` uses their first L entries (so ``model.levels=2`` works on a
3-level config), and the resolved config written to the run folder holds exactly L entries.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


@dataclass
class ModelConfig:
    levels: int = 3
    img_size: int = 32
    patch_size: int = 8
    in_chans: int = 1
    tubelet: int = 2  # frames per level-1 token
    # per level: time steps of the level below that one step of this level covers (level 1: 1)
    temporal_strides: list[int] = field(default_factory=lambda: [1, 2, 2])
    encoder_dims: list[int] = field(default_factory=lambda: [64, 64, 64])
    encoder_depths: list[int] = field(default_factory=lambda: [2, 2, 1])
    encoder_heads: list[int] = field(default_factory=lambda: [4, 4, 4])
    predictor_dims: list[int] = field(default_factory=lambda: [48, 48, 32])
    predictor_depths: list[int] = field(default_factory=lambda: [2, 2, 1])
    predictor_heads: list[int] = field(default_factory=lambda: [4, 4, 4])
    # predictor linears: trunc_normal (timm, std 0.02) | xavier (MAE: the context's content reaches the
    # predictions at initialisation; model/transformer.py)
    predictor_init: str = "trunc_normal"
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    abstraction: str = "attention"  # average | conv | attention
    topdown: str = "cross"  # none | cross | film | prepend
    # what the level above hands down: its context summary per coarse step (context), or that plus its own
    # predictions of the coarse steps it does not see (prediction: the lower level reads where the level
    # above expects the future to be; model/topdown.py)
    topdown_source: str = "context"
    # top-down keys: one per coarse step (step: the mean of its tokens) or one per coarse step and position
    # (token: where the level above sees or expects something survives; not with topdown=film)
    topdown_keys: str = "step"
    action_dim: int = 0  # 0: no actions; levels > 1 encode each window's chunk of actions (macro-actions)
    action_accumulate: bool = False  # each token also gets the summed embeddings of every action before its step
    attention_backend: str = "auto"  # auto | sdpa | cudnn | flash | xformers
    kernels: str = "auto"  # auto (Triton on CUDA) | reference (plain PyTorch) | triton (also on CPU, interpreter)
    share_encoders: bool = False  # levels > 1 reuse level 1's transformer blocks and norm (own tokenizer, predictor)


@dataclass
class DataConfig:
    dataset: str = "moving_digits"  # moving_digits | video_folder | rollouts
    root: str | None = None  # video_folder (videos, or shards: a folder or fsspec URL) and rollouts (hjepa collect)
    frames: int = 16
    frame_stride: int = 1  # video_folder only: take every n-th frame
    fps: float = 0.0  # video_folder only: > 0 samples frames at this rate (frame_stride then unused)
    clips_per_video: int = 1  # video_folder only: k > 1 reads k clips per visit, one from each of k equal parts
    augment: bool = False  # video_folder training only: random resized crop (+ hflip) instead of the centre crop
    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])  # augment: crop area / frame area
    crop_aspect: list[float] = field(default_factory=lambda: [0.75, 1.35])  # augment: crop width / height
    hflip: bool = False  # augment: mirror half the clips left-right
    pad_short: bool = False  # video_folder: a video shorter than a clip repeats its last frame (False: skipped)
    max_bad_fraction: float = 0.05  # video_folder: stop when more than this fraction of the files is skipped
    digit_size: int = 16  # moving_digits only: side of the moving digit in pixels
    digits: int = 1  # moving_digits only: the labelled digit plus digits - 1 distractors (they pass behind it)
    background: str = "black"  # moving_digits only: black | texture (a procedural texture panning across)
    num_workers: int = 0
    seed: int = 0  # which clips the data set renders; independent of the training seed


@dataclass
class MaskConfig:
    strategies: list[str] = field(default_factory=lambda: ["multiblock", "future", "future"])
    # multiblock (I-JEPA's published sampler, 3D)
    num_blocks: int = 4
    target_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])
    target_aspect: list[float] = field(default_factory=lambda: [0.75, 1.5])
    context_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    temporal_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    min_keep: int = 10
    # none: independent scale and aspect draws, corners may reach the last row/column; ijepa: I-JEPA's draw
    compat: str = "none"
    # future
    context_fraction: list[float] = field(default_factory=lambda: [0.5, 0.5])
    horizon: int = 1
    # segment
    segment_fraction: list[float] = field(default_factory=lambda: [0.25, 0.5])


@dataclass
class LossConfig:
    weighting: str = "uniform"  # uniform | increasing | curriculum | uncertainty
    curriculum_steps: int = 100  # curriculum: steps over which each higher level ramps in
    # prediction loss: l2 (L2-normalised, the overview's) | ijepa (layer-normalised targets, smooth-L1) |
    # vjepa (layer-normalised targets, L1)
    prediction: str = "l2"
    # anti-collapse terms per level on the content-centred online context embeddings (model/regularizers.py);
    # 0 turns a term off
    variance_weight: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    covariance_weight: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    sigreg_weight: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    sigreg_slices: int = 256  # random 1-D directions SIGReg tests per step
    # per level (future masks only): k > 1 predicts the first k - 1 target steps one at a time, each fed
    # back as context for the next, then the rest (a multi-step latent rollout, PLDM); 0 or 1: one pass
    rollout_steps: list[int] = field(default_factory=lambda: [0, 0, 0])
    regularizer_tokens: int = 8192  # rows the terms read per rank and level (a random subset beyond it; 0: all)


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1.5e-4  # per 256 clips: the peak LR is lr * batch_size / 256
    min_lr: float = 1.0e-6
    warmup_steps: int = 20
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05
    grad_clip: float = 0.0  # 0: off
    ema_tau_base: list[float] = field(default_factory=lambda: [0.996, 0.996, 0.996])
    ema_tau_end: list[float] = field(default_factory=lambda: [0.9999, 0.9999, 0.9999])
    seed: int = 0
    # ema: EMA target encoders (train.ema_tau_*); online: the stop-gradient of the online encoders (tau 0
    # at every level, exactly sg(f(x)) since the copy follows each step); needs an anti-collapse term
    target_encoder: str = "ema"
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    engine: str = "single"  # single | ddp | fsdp | deepspeed (multi-process: start with torchrun or deepspeed)
    deepspeed: str = ""  # engine=deepspeed: path to the DeepSpeed JSON (ZeRO stage etc.), e.g. configs/ds_zero2.json
    grad_accumulation: int = 1  # micro-batches per optimiser step: batch_size = ranks x grad_accumulation x micro
    # none | blocks: regional torch.compile of every transformer block (train/compile.py)
    compile: str = "none"
    fused_optimizer: bool = True  # fused AdamW (one kernel per step) where every parameter is on CUDA
    # per level: recompute each transformer block of that level's online encoder and predictor in backward
    activation_checkpointing: list[bool] = field(default_factory=lambda: [False, False, False])
    threads: int = 0  # CPU threads for torch; 0: torch's default
    out_dir: str = "runs"
    run_name: str = ""  # "": a time stamp
    log_every: int = 10
    ckpt_every: int = 100
    # per level, how tau goes from ema_tau_base to ema_tau_end: cosine | linear (I-JEPA, V-JEPA)
    ema_schedule: list[str] = field(default_factory=lambda: ["cosine", "cosine", "cosine"])


@dataclass
class EvalConfig:
    train_clips: int = 2000
    val_clips: int = 1000
    batch_size: int = 64
    labels: list[str] = field(default_factory=list)  # labels to probe; []: every label of the data set
    horizon: int = 0  # future-state error up to this many level-1 steps; 0: as far as the clip allows
    context_fraction: float = 0.5  # of the clip the predictors see (rounded to whole top-level steps)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


PER_LEVEL = {
    "model": ("temporal_strides", "encoder_dims", "encoder_depths", "encoder_heads", "predictor_dims",
              "predictor_depths", "predictor_heads"),
    "masks": ("strategies",),
    "loss": ("variance_weight", "covariance_weight", "sigreg_weight", "rollout_steps"),
    "train": ("ema_tau_base", "ema_tau_end", "activation_checkpointing"),
}
CHOICES = {
    ("model", "abstraction"): ("average", "conv", "attention"),
    ("model", "topdown"): ("none", "cross", "film", "prepend"),
    ("model", "topdown_source"): ("context", "prediction"),
    ("model", "topdown_keys"): ("step", "token"),
    ("model", "predictor_init"): ("trunc_normal", "xavier"),
    ("model", "attention_backend"): ("auto", "sdpa", "cudnn", "flash", "xformers"),
    ("model", "kernels"): ("auto", "reference", "triton"),
    ("masks", "compat"): ("none", "ijepa"),
    ("data", "dataset"): ("moving_digits", "video_folder", "rollouts"),
    ("data", "background"): ("black", "texture"),
    ("loss", "weighting"): ("uniform", "increasing", "curriculum", "uncertainty"),
    ("loss", "prediction"): ("l2", "ijepa", "vjepa"),
    ("train", "target_encoder"): ("ema", "online"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("train", "compile"): ("none", "blocks"),
    ("train", "engine"): ("single", "ddp", "fsdp", "deepspeed"),
}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` as the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"config key '{key}' must be {name}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, known: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key '{dotted}' must be section.name, e.g. train.batch_size")
    section_name, name = parts
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    if section_name not in sections:
        raise _unknown_key(dotted, [f"{s}.{f.name}" for s in sections for f in dataclasses.fields(getattr(cfg, s))])
    section = getattr(cfg, section_name)
    hints = typing.get_type_hints(type(section))
    if name not in hints:
        raise _unknown_key(dotted, [f"{section_name}.{n}" for n in hints])
    setattr(section, name, _coerce(value, hints[name], dotted))


def _flatten(tree: dict, where: str) -> dict[str, Any]:
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(tree).__name__}")
    flat = {}
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping, got {values!r}")
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.batch_size=16'`` -> ``('train.batch_size', 16)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.name=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e})") from None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file, then ``a.b=value`` overrides; validated and resolved."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        for key, value in _flatten(tree, str(path)).items():
            _set(cfg, key, value)
    for text in overrides:
        _set(cfg, *parse_override(text))
    return resolve(cfg)


def resolve(cfg: Config) -> Config:
    """Check values and cross-field rules; truncate per-level lists to ``model.levels``."""
    L = cfg.model.levels
    if L < 1:
        raise ConfigError(f"model.levels must be >= 1, got {L}")
    for (section, name), options in CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in options:
            raise ConfigError(f"config key '{section}.{name}' must be one of {options}, got {value!r}")
    for section, names in PER_LEVEL.items():
        for name in names:
            values = getattr(getattr(cfg, section), name)
            if len(values) < L:
                raise ConfigError(f"config key '{section}.{name}' needs one entry per level ({L}), got {values}")
            setattr(getattr(cfg, section), name, list(values[:L]))
    _check_ranges(cfg)
    m = cfg.model
    if m.temporal_strides[0] != 1:
        raise ConfigError(
            f"model.temporal_strides[0] must be 1 (level 1 runs at the token rate), got {m.temporal_strides[0]}"
        )
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size {m.img_size} must be a multiple of model.patch_size {m.patch_size}")
    steps = cfg.data.frames
    if steps % m.tubelet:
        raise ConfigError(f"data.frames {steps} must be a multiple of model.tubelet {m.tubelet}")
    steps //= m.tubelet
    for level, stride in enumerate(m.temporal_strides):
        if stride < 1 or steps % stride:
            raise ConfigError(
                f"model.temporal_strides[{level}] = {stride} does not divide the {steps} time steps below level "
                f"{level + 1} (data.frames / model.tubelet / strides so far)"
            )
        steps //= stride
    for level, (dim, heads) in enumerate(zip(m.encoder_dims + m.predictor_dims, m.encoder_heads + m.predictor_heads)):
        if dim % heads:
            kind = "encoder" if level < L else "predictor"
            raise ConfigError(f"model.{kind}_dims[{level % L}] = {dim} is not divisible by its heads {heads}")
    _check_shared_encoders(cfg)
    _check_ema_schedule(cfg)
    if m.topdown_keys == "token" and m.topdown == "film":
        raise ConfigError("model.topdown_keys=token needs model.topdown=cross or prepend: film reads one key "
                          "per coarse step")
    for s in cfg.masks.strategies:
        if s not in ("multiblock", "future", "segment"):
            raise ConfigError(f"masks.strategies: unknown strategy {s!r}; choose multiblock, future or segment")
    for name in ("ema_tau_base", "ema_tau_end"):
        for tau in getattr(cfg.train, name):
            if not 0.0 <= tau <= 1.0:
                raise ConfigError(f"train.{name} values must lie in [0, 1], got {tau}")
    _check_anti_collapse(cfg)
    for level, (k, strategy) in enumerate(zip(cfg.loss.rollout_steps, cfg.masks.strategies)):
        if k > 1 and strategy != "future":
            raise ConfigError(f"loss.rollout_steps[{level}] = {k} needs masks.strategies[{level}] = future (a "
                              f"rollout feeds each predicted step back as context), got {strategy}")
    if cfg.train.batch_size < 1 or cfg.train.steps < 1:
        raise ConfigError("train.batch_size and train.steps must be >= 1")
    if cfg.train.grad_accumulation < 1 or cfg.train.batch_size % cfg.train.grad_accumulation:
        raise ConfigError(f"train.grad_accumulation ({cfg.train.grad_accumulation}) must be >= 1 and divide "
                          f"train.batch_size ({cfg.train.batch_size})")
    if cfg.train.engine == "deepspeed" and not cfg.train.deepspeed:
        raise ConfigError("train.engine=deepspeed needs train.deepspeed=PATH to a DeepSpeed JSON, "
                          "e.g. configs/ds_zero2.json")
    if cfg.data.dataset == "video_folder" and not cfg.data.root:
        raise ConfigError("data.dataset=video_folder needs data.root (a folder of videos)")
    if m.action_accumulate and m.action_dim < 1:
        raise ConfigError("model.action_accumulate needs actions (model.action_dim > 0)")
    for video_only, on in (("data.clips_per_video > 1", cfg.data.clips_per_video > 1),
                           ("data.augment", cfg.data.augment)):
        if on and cfg.data.dataset != "video_folder":
            raise ConfigError(f"{video_only} needs data.dataset=video_folder, got {cfg.data.dataset}")
    if cfg.data.dataset == "rollouts" and not (cfg.data.root and m.action_dim > 0):
        raise ConfigError("data.dataset=rollouts needs data.root (a hjepa collect folder) and model.action_dim > 0")
    return cfg


# the range of every numeric setting: (test, what it says); lists are checked entry by entry, and PAIRS are
# [low, high] ranges whose entries must also be in order. A value outside is refused at load time by its key,
# before anything divides by it or hands it to a library that names it otherwise (AdamW's scaled lr, say).
# (train.ema_tau_* are checked in resolve itself.)
_AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
_FRACTION = (lambda v: 0 <= v <= 1, "in [0, 1]")
_SCALE = (lambda v: 0 < v <= 1, "in (0, 1]")
RANGES = {
    "model.img_size": _AT_LEAST_1, "model.patch_size": _AT_LEAST_1, "model.in_chans": _AT_LEAST_1,
    "model.tubelet": _AT_LEAST_1, "model.temporal_strides": _AT_LEAST_1, "model.encoder_dims": _AT_LEAST_1,
    "model.encoder_depths": _AT_LEAST_1, "model.encoder_heads": _AT_LEAST_1, "model.predictor_dims": _AT_LEAST_1,
    "model.predictor_depths": _AT_LEAST_1, "model.predictor_heads": _AT_LEAST_1, "model.mlp_ratio": _POSITIVE,
    "model.drop_path": (lambda v: 0 <= v < 1, "in [0, 1)"), "model.action_dim": _AT_LEAST_0,
    "data.frames": _AT_LEAST_1, "data.frame_stride": _AT_LEAST_1, "data.fps": _AT_LEAST_0,
    "data.clips_per_video": _AT_LEAST_1, "data.crop_scale": _SCALE, "data.crop_aspect": _POSITIVE,
    "data.max_bad_fraction": _FRACTION, "data.digit_size": _AT_LEAST_1,
    "data.num_workers": _AT_LEAST_0, "data.seed": _AT_LEAST_0, "data.digits": (lambda v: 1 <= v <= 100, "in [1, 100]"),
    "masks.num_blocks": _AT_LEAST_1, "masks.min_keep": _AT_LEAST_0, "masks.horizon": _AT_LEAST_1,
    "masks.target_scale": _SCALE, "masks.target_aspect": _POSITIVE, "masks.context_scale": _SCALE,
    "masks.temporal_scale": _FRACTION, "masks.context_fraction": _FRACTION, "masks.segment_fraction": _FRACTION,
    "loss.curriculum_steps": _AT_LEAST_1, "loss.variance_weight": _AT_LEAST_0, "loss.covariance_weight": _AT_LEAST_0,
    "loss.sigreg_weight": _AT_LEAST_0, "loss.rollout_steps": _AT_LEAST_0,
    "loss.sigreg_slices": _AT_LEAST_1, "loss.regularizer_tokens": _AT_LEAST_0,
    "train.steps": _AT_LEAST_1, "train.batch_size": _AT_LEAST_1, "train.lr": _AT_LEAST_0,
    "train.min_lr": _AT_LEAST_0, "train.warmup_steps": _AT_LEAST_0, "train.weight_decay": _AT_LEAST_0,
    "train.weight_decay_end": _AT_LEAST_0, "train.grad_clip": _AT_LEAST_0, "train.seed": _AT_LEAST_0,
    "train.grad_accumulation": _AT_LEAST_1,
    "train.threads": _AT_LEAST_0, "train.log_every": _AT_LEAST_1, "train.ckpt_every": _AT_LEAST_1,
    "eval.train_clips": _AT_LEAST_1, "eval.val_clips": _AT_LEAST_1, "eval.batch_size": _AT_LEAST_1,
    "eval.horizon": _AT_LEAST_0, "eval.context_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
}
PAIRS = ("data.crop_scale", "data.crop_aspect",
         "masks.target_scale", "masks.target_aspect", "masks.context_scale", "masks.temporal_scale",
         "masks.context_fraction", "masks.segment_fraction")


def _check_ranges(cfg: Config) -> None:
    """Refuse, by key, a numeric setting outside its range (NaN and infinity included)."""
    for key, (test, wanted) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if not (math.isfinite(v) and test(v)):
                where = f"{key}[{i}]" if isinstance(value, list) else key
                raise ConfigError(f"config key '{where}' must be {wanted}, got {v}")
        if key in PAIRS and (len(values) != 2 or values[0] > values[1]):
            raise ConfigError(f"config key '{key}' must be [low, high] with low <= high, got {value}")


def _check_anti_collapse(cfg: Config) -> None:
    """An online target (no EMA) needs a term at every level, or that level collapses; its target then
    copies the online encoder every step (tau 0)."""
    loss = cfg.loss
    if cfg.train.target_encoder == "online":
        bare = [level + 1 for level, ws in enumerate(zip(loss.variance_weight, loss.sigreg_weight)) if not any(ws)]
        if bare:
            raise ConfigError(f"train.target_encoder=online needs an anti-collapse term at every level (without "
                              f"an EMA target nothing else stops collapse); level(s) {bare} have none: set "
                              f"loss.variance_weight or loss.sigreg_weight > 0 there")
        cfg.train.ema_tau_base = [0.0] * cfg.model.levels  # the target copies the online encoder every step
        cfg.train.ema_tau_end = [0.0] * cfg.model.levels


def _check_shared_encoders(cfg: Config) -> None:
    """``model.share_encoders``: every level runs level 1's blocks, so their shapes must agree; the FSDP
    engine shards per level and would shard the shared blocks twice."""
    m = cfg.model
    if not m.share_encoders:
        return
    for name in ("encoder_dims", "encoder_heads", "encoder_depths"):
        values = getattr(m, name)
        if len(set(values)) > 1:
            raise ConfigError(f"model.share_encoders=true needs one model.{name} for every level (level 1's "
                              f"blocks run at all levels), got {values}: set it to {[values[0]] * len(values)}")
    if cfg.train.engine == "fsdp":
        raise ConfigError("model.share_encoders=true does not work with train.engine=fsdp (FSDP shards each "
                          "level's blocks, and shared blocks would be sharded twice): use train.engine=ddp, "
                          "deepspeed or single")


def _check_ema_schedule(cfg: Config) -> None:
    """train.ema_schedule: one of cosine | linear per level, truncated to model.levels like PER_LEVEL keys."""
    kinds, L = cfg.train.ema_schedule, cfg.model.levels
    if len(kinds) < L:
        raise ConfigError(f"config key 'train.ema_schedule' needs one entry per level ({L}), got {kinds}")
    if any(k not in ("cosine", "linear") for k in kinds):
        raise ConfigError(f"config key 'train.ema_schedule' entries must be cosine or linear, got {kinds}")
    cfg.train.ema_schedule = list(kinds[:L])


def level_time_steps(cfg: Config) -> list[int]:
    """Time steps of each level's token grid: ``T_1 = frames / tubelet``, ``T_l = T_{l-1} / stride_l``."""
    steps, out = cfg.data.frames // cfg.model.tubelet, []
    for stride in cfg.model.temporal_strides:
        steps //= stride
        out.append(steps)
    return out


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_dict(tree: dict) -> Config:
    """Rebuild a Config from a saved dict (a run folder's config.yaml or a checkpoint)."""
    cfg = Config()
    for key, value in _flatten(tree, "saved config").items():
        _set(cfg, key, value)
    return resolve(cfg)
