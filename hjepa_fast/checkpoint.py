"""Checkpoints that never lose work: written to a temporary file and renamed into place (atomic on
POSIX), holding everything an exact resume needs (model with targets, optimiser, step, RNG states).

They hold tensors and plain values only, so they load with ``torch.load(weights_only=True)``: opening a
checkpoint never runs code from it. Checkpoints of older versions (numpy's RNG state pickled as an
array) need the unsafe load; it happens only on request (``--trust-checkpoint`` or
``HJEPA_TRUST_CHECKPOINTS=1``), for files the user vouches for.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hjepa_fast.errors import CheckpointError

TRUST_ENV = "HJEPA_TRUST_CHECKPOINTS"  # "1": load with weights_only=False (files you wrote yourself only)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (numpy's key array as an int64 tensor)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        keys = saved["keys"].numpy().astype(np.uint32)
        saved = ("MT19937", keys, saved["pos"], saved["has_gauss"], saved["gauss"])
    np.random.set_state(saved)  # a tuple: a checkpoint of an older version, loaded with --trust-checkpoint
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` to ``path`` (a crash mid-write leaves the previous file intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def trusted() -> bool:
    """Whether the user asked for the unsafe load of old checkpoints (``HJEPA_TRUST_CHECKPOINTS=1``)."""
    return os.environ.get(TRUST_ENV, "") == "1"


def _why_unloadable(error: Exception) -> str:
    """One line on what is wrong with a file ``torch.load`` refused."""
    text = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"it holds a Python object that a safe load refuses ({refused.group(1)}): a crafted file, or a "
                "checkpoint of an older hjepa_fast; if you wrote it yourself, load it with --trust-checkpoint "
                f"(or {TRUST_ENV}=1), which runs any code the file holds")
    if "zip archive" in text or isinstance(error, EOFError):
        return "it is truncated or not a PyTorch file (no complete zip archive)"
    detail = text.strip().splitlines()[-1] if text.strip() else type(error).__name__
    return f"it is corrupt or not a PyTorch file ({detail[:200]})"


def load_checkpoint(path: str | Path, expect: tuple[str, ...] = ("step",)) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (on CPU; the caller moves tensors).

    Safe by default (``weights_only=True``); refuses with a ``CheckpointError`` naming the file a corrupt,
    truncated or foreign file, or one without the entries ``expect``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trusted())
    except Exception as e:  # noqa: BLE001 - random bytes make the unpickler raise anything (IndexError, ...)
        raise CheckpointError(f"cannot load checkpoint {path}: {_why_unloadable(e)}") from None
    missing = [key for key in expect if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not an hjepa_fast checkpoint (it lacks {', '.join(map(repr, missing))})")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """``model.load_state_dict(state["model"])``, refusing a checkpoint of another architecture by name."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()
        reason = " ".join(line.strip() for line in first[:2])[:300] if first else type(e).__name__
        raise CheckpointError(f"{path} does not fit the model of the run's config.yaml: {reason}") from None
