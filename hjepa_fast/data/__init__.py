"""Data sets (items `{"clip": uint8 [T, C, H, W], "labels": {...}, "step": int}`) and the step sampler.

PyAV is imported only when a `VideoFolder` is built, so this package imports without it.
"""

from __future__ import annotations

import os

from hjepa_fast.data.moving_digits import MovingDigits
from hjepa_fast.data.rollouts import Rollouts
from hjepa_fast.data.sampler import SampleKey, StepBatchSampler
from hjepa_fast.data.shards import VideoShards, has_shards
from hjepa_fast.data.video_folder import VideoFolder

__all__ = ["DATASETS", "MovingDigits", "Rollouts", "SampleKey", "StepBatchSampler", "VideoFolder", "VideoShards",
           "build_dataset"]

DATASETS = ("moving_digits", "video_folder", "rollouts")


def build_dataset(
    name: str,
    split: str,
    *,
    frames: int,
    size: int,
    channels: int,
    root: str | None,
    seed: int,
    frame_stride: int = 1,
    fps: float = 0.0,
    augment: bool = False,
    crop_scale: tuple[float, float] = (0.3, 1.0),
    crop_aspect: tuple[float, float] = (0.75, 1.35),
    hflip: bool = False,
    pad_short: bool = False,
    max_bad_fraction: float = 0.05,
    digit_size: int = 16,
    digits: int = 1,
    background: str = "black",
) -> MovingDigits | VideoFolder | Rollouts:
    """The data set `name` for `split`, as configured.

    video_folder reads `root/split` when that folder exists, else its files of `root` (split by file); a
    `root` (a folder or fsspec URL) that holds shards written by `hjepa_fast.data.shards` is read the same
    way, through VideoShards.
    moving_digits is 1-channel and uses `digit_size`, `digits` and `background`; video_folder uses `root`,
    `frame_stride`, `fps`, the augmentation (`augment`, `crop_scale`, `crop_aspect`, `hflip`: training only) and
    the bad-file rules (`pad_short`, `max_bad_fraction`);
    rollouts reads a `hjepa collect` folder `root` (items carry actions).
    """
    if name == "moving_digits":
        if channels != MovingDigits.channels:
            raise ValueError(f"moving_digits has {MovingDigits.channels} channel, got channels={channels}")
        return MovingDigits(split, frames=frames, size=size, digit_size=digit_size, seed=seed, digits=digits,
                            background=background)
    if name == "video_folder":
        if root is None:
            raise ValueError("video_folder needs a root folder (got root=None)")
        split_root = os.path.join(root, split)
        options = dict(frames=frames, size=size, frame_stride=frame_stride, channels=channels, seed=seed, fps=fps,
                       augment=augment, crop_scale=crop_scale, crop_aspect=crop_aspect, hflip=hflip,
                       pad_short=pad_short, max_bad_fraction=max_bad_fraction)
        if has_shards(split_root):
            return VideoShards(split_root, **options)
        if has_shards(root):
            return VideoShards(root, split=split, **options)
        if os.path.isdir(split_root):
            return VideoFolder(split_root, **options)
        return VideoFolder(root, split=split, **options)
    if name == "rollouts":
        if root is None:
            raise ValueError("rollouts needs a root folder written by hjepa collect (got root=None)")
        return Rollouts(root, split, frames=frames, size=size, channels=channels)
    raise ValueError(f"unknown data set {name!r}; choices: {', '.join(DATASETS)}")
