"""Checkpoints that never lose work: written to a temporary file and renamed into place (atomic on
POSIX), holding everything an exact resume needs (model with targets, optimiser, step, RNG states).

They hold tensors and plain values only, so they load with ``torch.load(weights_only=True)``: opening a
checkpoint never runs code from it. Checkpoints of older versions (numpy's RNG state pickled as an
array) need the unsafe load; it happens only on request (``--trust-checkpoint`` or
``HJEPA_TRUST_CHECKPOINTS=1``), for files the user vouches for.

The sharded checkpoints of ``train.engine=fsdp`` (a ``torch.distributed.checkpoint`` folder) and
``deepspeed`` are read here too, as safely as their formats allow (``read_dcp_metadata``,
``load_deepspeed_model``); ``runs.load_run_state`` picks the reader a run folder needs.
"""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
import random
import re
import sys
import warnings
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


# -- sharded checkpoints ---------------------------------------------------------------------------------
# torch.distributed.checkpoint (DCP, train.engine=fsdp) reads its ``.metadata`` file with plain ``pickle``
# and non-tensor entries (optimiser hyper-parameters) with ``torch.load(weights_only=False)``; its tensors
# already load with ``weights_only=True``. ``dcp_reader`` and ``dcp_planner`` close both gaps: the metadata
# goes through an unpickler that builds only DCP's own metadata classes (and torch.Size, dtypes, paths),
# the non-tensor entries through the safe load. Either refuses a crafted file before anything in it runs.

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_GLOBALS = {
    *((_DCP_METADATA, name) for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                         "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                         "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
    ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib._local", "PosixPath"),
    ("collections", "OrderedDict"),
}


class _DCPMetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata``: its own classes, ``torch.Size``, dtypes and paths; nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                               torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused GLOBAL {module}.{name}")


def read_dcp_metadata(folder: str | Path):
    """The ``Metadata`` of the DCP folder ``folder``, read safely (``--trust-checkpoint``: plain pickle).
    Refuses a crafted or corrupt file, and one that points at files outside ``folder``, in one line."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(folder) / ".metadata"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a torch.distributed.checkpoint folder (no .metadata)")
    try:
        with open(path, "rb") as f:
            metadata = pickle.load(f) if trusted() else _DCPMetadataUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - a crafted or truncated pickle raises anything
        raise CheckpointError(f"cannot load checkpoint {path}: {_why_unloadable(e)}") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path} is not torch.distributed.checkpoint metadata ({type(metadata).__name__})")
    for info in (metadata.storage_data or {}).values():
        name = str(getattr(info, "relative_path", ""))
        if not name or name != Path(name).name or name in (".", ".."):
            raise CheckpointError(f"{path} names a data file outside its folder ({name!r}): refused")
    return metadata


@functools.cache
def _dcp_classes():
    """A FileSystemReader whose metadata read is ``read_dcp_metadata``, and a load planner whose non-tensor
    entries load through ``torch.load(weights_only=True)`` (built once, on first use: the import is slow)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            metadata = read_dcp_metadata(self.path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            try:
                torch.load(value, map_location="cpu", weights_only=not trusted())
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"cannot load checkpoint entry {read_item.dest_index.fqn}: "
                                      f"{_why_unloadable(e)}") from None
            value.seek(0)  # safe: now the planner's own (unsafe) load of the same bytes
            super().load_bytes(read_item, value)

    return SafeReader, SafePlanner


def dcp_reader(folder: str | Path):
    """A ``torch.distributed.checkpoint`` storage reader for ``folder`` that reads its metadata safely."""
    return _dcp_classes()[0](str(folder))


def dcp_planner(**kw: Any):
    """A ``DefaultLoadPlanner`` that loads non-tensor entries safely."""
    return _dcp_classes()[1](**kw)


def _checkpoint_failure(folder: Path, error: Exception) -> CheckpointError:
    """One line for a failed DCP load (DCP wraps the failure of each rank in a ``CheckpointException``)."""
    text = str(error)
    for line in text.splitlines():
        if "CheckpointError:" in line:
            return CheckpointError(line.split("CheckpointError:", 1)[1].strip())
    if isinstance(error, CheckpointError):
        return error
    return CheckpointError(f"cannot load checkpoint {folder}: {_why_unloadable(error)}")


def dcp_load(state: dict[str, Any], folder: str | Path, no_dist: bool = False) -> None:
    """``torch.distributed.checkpoint.load`` of ``folder`` into ``state`` (in place), safely; a bad folder
    is refused in one line. ``no_dist``: one process reads everything (no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    folder = Path(folder)
    read_dcp_metadata(folder)  # a crafted metadata file stops here, before DCP's planning
    try:
        with warnings.catch_warnings():  # without a process group: "assuming ... a single process", as meant
            warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
            dcp.load(state, storage_reader=dcp_reader(folder), planner=dcp_planner(), no_dist=no_dist)
    except (Exception, CheckpointException) as e:  # noqa: BLE001
        raise _checkpoint_failure(folder, e) from None


def load_dcp_model(folder: str | Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    """The full (unsharded) tensors under ``prefix`` of a DCP folder, in one process without a process
    group: ``{name: tensor}`` with ``prefix.`` stripped (``model``: the model's state dict as saved)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_dcp_metadata(folder)
    start = f"{prefix}."
    wanted = {fqn[len(start):]: torch.empty(md.size, dtype=md.properties.dtype)
              for fqn, md in metadata.state_dict_metadata.items()
              if fqn.startswith(start) and isinstance(md, TensorStorageMetadata)}
    if not wanted:
        raise CheckpointError(f"{folder} holds no {prefix!r} tensors: not an hjepa_fast FSDP checkpoint")
    dcp_load({prefix: wanted}, folder, no_dist=True)
    return wanted


# DeepSpeed (train.engine=deepspeed) writes ``checkpoint_ds/<tag>/``: ``mp_rank_00_model_states.pt`` (the
# module's state dict under "module"; under ZeRO-3 only placeholders) and one
# ``*zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` per rank (the fp32 master partitions). hjepa keeps fp32
# module weights (bf16/fp16 in the JSON are refused), so under ZeRO 0-2 the module state *is* the model.
DS_MODEL_STATES = "mp_rank_00_model_states.pt"


def _safe_torch_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted(), mmap=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot load checkpoint {path}: {_why_unloadable(e)}") from None


# plain data classes that DeepSpeed pickles into its optimiser-state files: a safe load may build them
_DEEPSPEED_GLOBALS = (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                      ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                      ("deepspeed.utils.tensor_fragment", "fragment_address"))


def _deepspeed_globals() -> list:
    import importlib

    found = []
    for module, name in _DEEPSPEED_GLOBALS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: its files fail the safe load by name
            continue
    return found


def load_deepspeed_model(folder: str | Path, tag: str, zero_stage: int | None = None) -> dict[str, torch.Tensor]:
    """The consolidated fp32 state dict of the module DeepSpeed trained, from ``folder/tag``.

    ZeRO 0-2: ``mp_rank_00_model_states.pt``'s module state, loaded safely (no DeepSpeed needed).
    ZeRO-3: DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` (needs ``deepspeed``), after every
    ``.pt`` file of the tag has passed the safe load (DeepSpeed's own loader unpickles them).
    ``zero_stage`` None (a meta that does not say): ZeRO-3 writes per-rank model-state files, not
    ``mp_rank_00_model_states.pt``."""
    path = Path(folder) / tag
    if not path.is_dir():
        raise CheckpointError(f"DeepSpeed checkpoint {path} is missing (hjepa_meta.pt names tag {tag!r})")
    if zero_stage is None:
        zero_stage = 2 if (path / DS_MODEL_STATES).is_file() else 3
    if zero_stage < 3:
        states = _safe_torch_file(path / DS_MODEL_STATES) if (path / DS_MODEL_STATES).is_file() else None
        if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
            raise CheckpointError(f"{path} is not a DeepSpeed checkpoint (no module state in {DS_MODEL_STATES})")
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as e:
        raise CheckpointError(f"{path} is a ZeRO-3 checkpoint: gathering its partitions needs DeepSpeed, which "
                              f"is not installed ({e}); pip install deepspeed (or run `hjepa export` where it is)"
                              ) from None
    with torch.serialization.safe_globals(_deepspeed_globals()):
        for file in sorted(path.glob("*.pt")):
            _safe_torch_file(file)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines: not the command's output
            return dict(get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag))
    except Exception as e:  # noqa: BLE001 - DeepSpeed raises ValueError, KeyError, ... on a damaged folder
        raise CheckpointError(f"cannot consolidate DeepSpeed checkpoint {path}: {type(e).__name__}: {e}") from None
