"""Rollouts written by ``hjepa collect``: every window of ``frames`` consecutive observations of an
episode is one item, with the actions taken at those frames.

Item ``(index, step)`` -> ``{"clip": uint8 [frames, C, H, W], "actions": float32 [frames, A],
"labels": {"episode": e}, "step": step}``; ``actions[i]`` is the action taken at ``clip[i]`` (it moves
the world to the next frame), so a window starting at t needs actions up to t + frames - 1. The last
10 % of the episodes (at least one) are the ``val`` split, the rest ``train``. A folder that does not fit
the config (image size, channels, episodes shorter than a clip) is a ``ConfigError``: the CLI names it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hjepa_fast.config import ConfigError

_SPLITS = ("train", "val")


class Rollouts(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, split: str = "train", frames: int = 16, size: int | None = None,
                 channels: int | None = None):
        root = Path(root)
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if not (root / "meta.json").is_file():
            raise FileNotFoundError(f"{root} holds no rollouts (no meta.json): write some with hjepa collect")
        self.meta = json.loads((root / "meta.json").read_text())
        C, H, W = self.meta["obs_shape"]
        if size is not None and (H, W) != (size, size):
            raise ConfigError(f"rollouts in {root} are {H}x{W}, the model expects {size}x{size} (model.img_size)")
        if channels is not None and C != channels:
            raise ConfigError(f"rollouts in {root} have {C} channels, the model expects {channels} (model.in_chans)")
        if frames > self.meta["steps"]:
            raise ConfigError(f"clips of {frames} frames need episodes of >= {frames} steps, got {self.meta['steps']}")
        files = sorted(root.glob("ep_*.npz"))
        n_val = max(1, len(files) // 10) if len(files) > 1 else 0
        files = files[:len(files) - n_val] if split == "train" else files[len(files) - n_val:]
        if not files:
            raise ConfigError(f"{root} has no episodes for split {split!r} ({len(files)} episode files)")
        self.frames = frames
        loaded = [np.load(f) for f in files]
        self.obs = [torch.from_numpy(d["obs"]) for d in loaded]
        self.actions = [torch.from_numpy(d["actions"]) for d in loaded]
        starts = [len(a) - frames + 1 for a in self.actions]  # window start t <= steps - frames
        self.index = [(e, t) for e, n in enumerate(starts) for t in range(n)]
        self.action_dim = int(self.meta["action_dim"])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        index, step = key[0], key[1]  # a SampleKey or (index, step): the clip depends on the index alone
        e, t = self.index[index]
        return {"clip": self.obs[e][t:t + self.frames], "actions": self.actions[e][t:t + self.frames],
                "labels": {"episode": e}, "step": step}
