"""Moving-digits clips built from scikit-learn's embedded handwritten digits (no download needed).

The plain set (one digit on black) leaves most tokens pure background: a predictor that outputs each
position's average does almost as well as one that reads its context. ``digits > 1`` adds distractor
digits with motions of their own (they pass behind the labelled digit: occlusion) and
``background="texture"`` a procedural texture that pans across the frame, so every token carries content
that moves and a context-blind predictor is visibly wrong."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

# The train/val split must not move when the clip seed changes, so it has its own fixed seed.
_SPLIT_SEED = 20_240_601
_TRAIN_FRACTION = 0.8
_SPLITS = ("train", "val")
_NUM_DIRECTIONS = 8
_SPEED_RANGE = (1.0, 2.0)  # px per frame
SPEED_BINS = 3  # the `speed` label: equal thirds of the speed range (slow, medium, fast)
BACKGROUNDS = ("black", "texture")
_TEXTURE_GRATINGS = 4  # cosine gratings summed into one background texture
_TEXTURE_PEAK = 110  # brightest background pixel (digits reach 255, so they stay visible)
_PAN_SPEED_RANGE = (0.5, 1.5)  # px per frame of the background
_BACKGROUND_STREAM = 1_000  # RNG stream of the background (distractor k uses stream k)


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 sklearn digits: images float32 [1797, 8, 8] in 0..16 and targets int64 [1797]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def split_image_indices(split: str) -> np.ndarray:
    """Indices into `load_digits()` of the images of `split` (int64 [n]); train and val are disjoint."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    num_images = len(_load_digits()[1])
    perm = np.random.default_rng(_SPLIT_SEED).permutation(num_images)
    cut = int(round(_TRAIN_FRACTION * num_images))
    return perm[:cut] if split == "train" else perm[cut:]


def _bounce(start: np.ndarray, velocity: np.ndarray, steps: np.ndarray, limit: int) -> np.ndarray:
    """Positions [T, 2] of a point moving in [0, limit] and reflecting off both walls.

    Unfolding the reflections gives a triangle wave of the free path, so all frames are computed at once.
    """
    if limit == 0:
        return np.zeros((len(steps), 2))
    free = start[None, :] + steps[:, None] * velocity[None, :]
    return limit - np.abs(limit - np.mod(free, 2 * limit))


def panning_texture(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """uint8 ``[frames, size, size]``: a sum of cosine gratings whose frequencies are whole cycles per frame
    width (so the texture tiles), panning at a random constant velocity."""
    fx, fy = rng.integers(1, 4, size=(2, _TEXTURE_GRATINGS)) * rng.choice([-1, 1], size=(2, _TEXTURE_GRATINGS))
    phase = rng.uniform(0, 2 * np.pi, size=_TEXTURE_GRATINGS)
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*_PAN_SPEED_RANGE)
    shift = speed * np.arange(frames)[:, None] * np.array([np.cos(angle), np.sin(angle)])  # [T, 2]
    coords = np.arange(size)
    x = coords[None, None, :, None] - shift[:, 0, None, None, None]  # [T, 1, W, 1]
    y = coords[None, :, None, None] - shift[:, 1, None, None, None]  # [T, H, 1, 1]
    waves = np.cos(2 * np.pi * (fx * x + fy * y) / size + phase).mean(-1)  # [T, H, W] in [-1, 1]
    return np.rint((waves + 1) * (_TEXTURE_PEAK / 2)).astype(np.uint8)


class MovingDigits(torch.utils.data.Dataset):
    """An sklearn digit bouncing around the frame: the default, always-available data set.

    Item `(index, step)` -> `{"clip": uint8 [frames, 1, size, size], "labels": {"digit", "direction", "speed"},
    "step": step}` (speed: one of SPEED_BINS equal bins of 1-2 px/frame); `positions(index)` gives the
    labelled digit's centre per frame. `digits - 1` distractor digits (other images of the split, their own
    motions) are drawn first, the labelled digit on top; `background` is `black` or a panning `texture`.
    The clip depends only on (seed, split, index), never on global RNG state or `step`, so any worker and
    any resumed run render identical clips; with one digit on black it is the original set, pixel for pixel.
    """

    channels = 1

    def __init__(
        self,
        split: str = "train",
        frames: int = 16,
        size: int = 32,
        digit_size: int = 16,
        num_clips: int | None = None,
        seed: int = 0,
        digits: int = 1,
        background: str = "black",
    ) -> None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if not 1 <= digit_size <= size:
            raise ValueError(f"need 1 <= digit_size <= size, got digit_size={digit_size}, size={size}")
        if not 1 <= digits < _BACKGROUND_STREAM:
            raise ValueError(f"digits must be in [1, {_BACKGROUND_STREAM}), got {digits}")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
        self.digits, self.background = digits, background
        self.split = split
        self.frames = frames
        self.size = size
        self.digit_size = digit_size
        self.seed = seed
        self.image_indices = split_image_indices(split)
        self.num_clips = 4 * len(self.image_indices) if num_clips is None else num_clips
        if self.num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {self.num_clips}")

        images, targets = _load_digits()
        small = torch.from_numpy(images[self.image_indices]).unsqueeze(1) * (255.0 / 16.0)
        big = F.interpolate(small, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
        # Sprites uint8 [n_images, digit_size, digit_size], upscaled once here instead of per item.
        self.sprites = big.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
        self.targets = targets[self.image_indices]

    def __len__(self) -> int:
        return self.num_clips

    def _rng(self, index: int, *stream: int) -> np.random.Generator:
        """The generator of clip `index` (stream (): the labelled digit; others: distractors, background)."""
        return np.random.default_rng((self.seed, _SPLITS.index(self.split), index, *stream))

    def _motion(self, index: int, *stream: int) -> tuple[int, float, np.ndarray]:
        """(direction, speed in px/frame, top-left corners int64 [frames, 2] as (x, y)) of clip `index`'s
        labelled digit (or of the distractor of `stream`)."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range [0, {self.num_clips})")
        rng = self._rng(index, *stream)
        direction = int(rng.integers(_NUM_DIRECTIONS))
        angle = direction * 2 * np.pi / _NUM_DIRECTIONS  # 0 = right, 2 = down (image rows grow downwards)
        speed = rng.uniform(*_SPEED_RANGE)
        limit = self.size - self.digit_size
        start = rng.uniform(0, limit, size=2)  # (x, y) of the sprite's top-left corner
        velocity = speed * np.array([np.cos(angle), np.sin(angle)])
        xy = np.rint(_bounce(start, velocity, np.arange(self.frames), limit)).astype(np.int64)
        return direction, float(speed), xy

    def positions(self, index: int) -> np.ndarray:
        """Ground-truth state of clip `index`: the digit's centre (x, y) in pixels per frame, float32
        [frames, 2], exactly where `__getitem__` drew it (the target of the future-state probe)."""
        return (self._motion(index)[2] + self.digit_size / 2).astype(np.float32)

    def _paste(self, clip: np.ndarray, sprite: np.ndarray, xy: np.ndarray) -> None:
        """Draw `sprite` [d, d] into every frame of `clip` [T, H, W] at corners `xy` [T, 2] (all frames at
        once by broadcast fancy indexing); the sprite's dark pixels let what is behind show through."""
        offsets = np.arange(self.digit_size)
        at = (np.arange(self.frames)[:, None, None], (xy[:, 1, None] + offsets)[:, :, None],
              (xy[:, 0, None] + offsets)[:, None, :])  # [T, 1, 1], [T, d, 1], [T, 1, d]
        clip[at] = np.where(sprite > 0, sprite, clip[at])

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        index, step = key[0], key[1]  # a SampleKey or (index, step): the clip depends on the index alone
        direction, speed, xy = self._motion(index)
        image = index % len(self.image_indices)
        low, high = _SPEED_RANGE
        speed_bin = min(int((speed - low) / (high - low) * SPEED_BINS), SPEED_BINS - 1)

        if self.background == "texture":
            clip = panning_texture(self._rng(index, _BACKGROUND_STREAM), self.frames, self.size)
        else:
            clip = np.zeros((self.frames, self.size, self.size), dtype=np.uint8)
        for k in range(1, self.digits):  # distractors first: the labelled digit passes in front of them
            other = int(self._rng(index, k, 0).integers(len(self.image_indices)))
            self._paste(clip, self.sprites[other], self._motion(index, k)[2])
        self._paste(clip, self.sprites[image], xy)
        return {
            "clip": torch.from_numpy(clip).unsqueeze(1),
            "labels": {"digit": int(self.targets[image]), "direction": direction, "speed": speed_bin},
            "step": step,
        }
