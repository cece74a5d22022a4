"""Crops and flips of uint8 clips, one box for every frame of a clip (V-JEPA's video augmentation).

The crop is cut from the decoded frames and only it is resized (antialiased bilinear, torchvision's uint8
path), so no pixel that the crop drops is ever interpolated and nothing leaves uint8.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch


class Box(NamedTuple):
    """A crop of a frame, in source pixels."""

    top: int
    left: int
    height: int
    width: int


def center_box(height: int, width: int) -> Box:
    """The largest centred square: what evaluation (no augmentation) crops."""
    side = min(height, width)
    return Box((height - side) // 2, (width - side) // 2, side, side)


def random_resized_box(
    height: int, width: int, scale: tuple[float, float], aspect: tuple[float, float], rng: np.random.Generator
) -> Box:
    """A box of area ``scale`` x the frame's and width/height ``aspect`` (log-uniform), at a uniform position.

    torchvision's RandomResizedCrop rule, drawn from ``rng`` (so it is a function of the clip's seed): up to
    ten draws until one fits in the frame, else the centred crop of the aspect nearest the allowed range."""
    area = height * width
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w)
    ratio = width / height
    if ratio < aspect[0]:
        w, h = width, round(width / aspect[0])
    elif ratio > aspect[1]:
        w, h = round(height * aspect[1]), height
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w)


def crop_resize(clip: torch.Tensor, box: Box, size: int, flip: bool = False) -> torch.Tensor:
    """uint8 [T, C, H, W] -> uint8 [T, C, size, size]: ``box`` of every frame resized to ``size``, mirrored
    left-right where ``flip``."""
    from torchvision.transforms.v2 import functional as TF  # imported here: `hjepa_fast.data` loads 1.7 s faster

    out = TF.resized_crop(clip, box.top, box.left, box.height, box.width, [size, size], antialias=True)
    return out.flip(-1) if flip else out
