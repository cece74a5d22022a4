"""``hjepa export RUN OUT``: a run's encoders as one consolidated, framework-free file (docs/checkpoints.md).

The file is a safetensors file (or, with ``fmt="pt"``, a ``torch.save`` of the same tensors that loads
with ``weights_only=True``) of full fp32 tensors on the CPU, whichever engine trained the run (it reads
the run through ``runs.load_run_state``). Key layout, levels counted from 1 as in ``hjepa eval``:

- ``level{i}.encoder.<name>``: the online encoder of level i, ``<name>`` as in ``LevelEncoder.state_dict()``
  (``tokenizer.*``, ``blocks.{j}.*``, ``norm.*``): strip the prefix and ``load_state_dict(strict=True)``;
- ``level{i}.target_encoder.<name>``: its EMA target (the usual choice for downstream features);
- ``level{i}.pos_embed``: the fixed sine-cosine position table ``[T*H*W, D]`` (time-major) the encoder adds
  after its tokenizer (a buffer, not a parameter: written so that code without hjepa_fast needs nothing
  else).

Metadata (safetensors' string dict): ``format`` (``hjepa_fast.encoders/1``), ``levels``, ``step``,
``config`` (the run's whole config as JSON), ``level{i}.grid`` (JSON ``[T, H, W]``), ``level{i}.dim``,
``input`` (what level 1 takes) and ``hjepa_fast`` (the version that wrote it).

With ``model.share_encoders`` the shared blocks are written under every level (each level's keys are
complete on their own). The file is written to a temporary name beside OUT and renamed into place: OUT is
never half-written; an existing OUT is refused unless ``force``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import hjepa_fast
from hjepa_fast.builders import build_model
from hjepa_fast.checkpoint import load_model_state
from hjepa_fast.config import ConfigError, to_dict
from hjepa_fast.runs import load_run

FORMAT = "hjepa_fast.encoders/1"
FORMATS = ("safetensors", "pt")
INPUT = ("level 1: clips [B, frames, C, H, W], float in [-1, 1] (uint8 / 127.5 - 1); level i > 1: level i-1's "
         "encodings as a grid [B, T, H*W, D] (with a visibility mask, or None for all tokens)")


def encoder_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The export's tensors of an ``HJEPA``: every level's online and target encoder and position table,
    as separate contiguous CPU copies (shared blocks are copied under every level)."""
    out: dict[str, torch.Tensor] = {}
    for i, (online, target) in enumerate(zip(model.encoders, model.target_encoders), start=1):
        for kind, module in (("encoder", online), ("target_encoder", target)):
            for name, tensor in module.state_dict().items():
                out[f"level{i}.{kind}.{name}"] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
        out[f"level{i}.pos_embed"] = online.pos.detach().to("cpu", torch.float32).contiguous().clone()
    return out


def export_metadata(cfg, model: torch.nn.Module, step: int) -> dict[str, str]:
    meta = {"format": FORMAT, "levels": str(model.levels), "step": str(step), "config": json.dumps(to_dict(cfg)),
            "input": INPUT, "hjepa_fast": hjepa_fast.__version__}
    for i, (grid, encoder) in enumerate(zip(model.grids, model.encoders), start=1):
        meta[f"level{i}.grid"] = json.dumps(list(grid))
        meta[f"level{i}.dim"] = str(encoder.norm.normalized_shape[0])
    return meta


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "safetensors", force: bool = False) -> Path:
    """Write ``run_dir``'s encoders to ``out`` (see the module's docstring); returns ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.is_dir():
        raise FileExistsError(f"{out} is a folder: give the path of the file to write")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists: pass --force to replace it")
    cfg, state = load_run(run_dir)
    model = build_model(cfg)
    load_model_state(model, state, state["path"])  # refuses a checkpoint of another architecture by name
    tensors, meta = encoder_tensors(model), export_metadata(cfg, model, int(state["step"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=meta)
        else:
            torch.save({"tensors": tensors, "metadata": meta}, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
