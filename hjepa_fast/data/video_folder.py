"""Clips decoded with PyAV from a folder of videos, one class per parent folder."""

from __future__ import annotations

import math
import os
import sys
import zlib
from fractions import Fraction

import numpy as np
import torch

from hjepa_fast.data.augment import center_box, crop_resize, random_resized_box
from hjepa_fast.data.clips import clip_frame_numbers, clip_span
from hjepa_fast.data.decode import Video, VideoDecodeError, VideoInfo, import_av
from hjepa_fast.data.sampler import SampleKey
from hjepa_fast.data.skips import NoUsableVideoError, SkippedFiles
from hjepa_fast.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
VAL_FRACTION = 0.2  # of the files of a folder without train/ and val/ subfolders, held out for val
COUNTS_KEPT = 100_000  # frame counts of header-less files (mkv, webm) a process remembers (~10 MB)
_NOTED: set[str] = set()  # folders whose split by file has been announced in this process


def split_by_file(paths: list[str], root: str, split: str) -> list[int]:
    """Indices of ``paths`` that belong to ``split`` ("train" or "val") of a folder without split folders.

    The ``ceil(VAL_FRACTION * n)`` files whose paths under ``root`` hash lowest (crc32) are val, the rest
    train: the same files every run and on every machine, and no file in both, so a probe is never scored
    on the clips it was fitted on."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if len(paths) < 2:
        raise DataError(f"{root} holds {len(paths)} video: splitting it by file needs at least 2 (or make "
                        f"{os.path.join(root, 'train')} and {os.path.join(root, 'val')})")
    ranked = sorted(range(len(paths)), key=lambda i: (zlib.crc32(os.path.relpath(paths[i], root).encode()), i))
    val = set(ranked[: math.ceil(len(paths) * VAL_FRACTION)])
    if root not in _NOTED:
        _NOTED.add(root)
        print(f"note: {root} has no train/ and val/ subfolders: split by file, {len(val)} of {len(paths)} videos "
              "held out for val (the same files every run)", file=sys.stderr)
    return [i for i in range(len(paths)) if (i in val) == (split == "val")]


def list_videos(root: str) -> list[str]:
    """Every video file under the folder `root` (recursive), sorted."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video folder not found: {root!r}")
    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.lower().endswith(VIDEO_EXTENSIONS)
    )
    if not paths:
        raise DataError(f"no videos under {root!r}; accepted extensions: {', '.join(VIDEO_EXTENSIONS)}")
    return paths


class VideoTooShortError(DataError):
    """A video with fewer frames than one clip spans."""


class VideoFolder(torch.utils.data.Dataset):
    """Every video under `root` (recursive, sorted), or with `split` its files of `split_by_file`; label =
    rank of its parent folder's name among all videos under `root`.

    Item `SampleKey(index, step, slot, part, parts)` (or `(index, step)`) -> `{"clip": uint8 [frames,
    channels, size, size], "labels": {"class": k}, "step": step}`.

    - Frames: `frames` of them, `frame_stride` source frames apart, or with `fps` > 0 1/fps seconds apart
      (the nearest source frame to each time), from a start drawn in part `part` of `parts` equal parts of
      the video (`hjepa_fast.data.clips`).
    - Crop: the centred square, or with `augment` a random resized crop (area `crop_scale` of the frame,
      aspect `crop_aspect`; with `hflip` mirrored with probability 1/2), one box per clip; then resized to
      `size`.
    - Randomness: one generator seeded by (seed, step, slot, index) draws start, box and flip, so every visit
      of a video draws a fresh clip and a resumed or re-sharded run draws the same clips as an uninterrupted
      one.
    - Decoding seeks to the keyframe before the clip and stops after its last frame
      (`hjepa_fast.data.decode`); frames stay uint8 from the decoder to the batch.
    - Bad files: a video that does not open or decode (corrupt, empty, no video stream), or one shorter than
      a clip (unless `pad_short`: then its last frame repeats), is skipped: item `index` reads the next
      video that is usable, each skipped file is logged once (`SkippedFiles`, shared by the DataLoader's
      workers), and past `max_bad_fraction` of the files skipped the run stops with an error naming it.
    """

    def __init__(
        self,
        root: str,
        frames: int = 16,
        size: int = 64,
        frame_stride: int = 1,
        channels: int = 3,
        seed: int = 0,
        split: str | None = None,
        fps: float = 0.0,
        augment: bool = False,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_aspect: tuple[float, float] = (0.75, 1.35),
        hflip: bool = False,
        pad_short: bool = False,
        max_bad_fraction: float = 0.05,
    ) -> None:
        import_av()  # fail early with the install hint; the module is not stored, so the set pickles
        if frames < 1 or frame_stride < 1 or size < 1:
            raise ValueError(f"frames, size, frame_stride must be >= 1, got {frames}, {size}, {frame_stride}")
        if fps < 0:
            raise ValueError(f"fps must be > 0 (sample at that rate) or 0 (use frame_stride), got {fps}")
        if not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {crop_scale}")
        if not (len(crop_aspect) == 2 and 0 < crop_aspect[0] <= crop_aspect[1]):
            raise ValueError(f"crop_aspect must be [low, high] with 0 < low <= high, got {crop_aspect}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.root = root
        self.frames = frames
        self.size = size
        self.frame_stride = frame_stride
        self.fps = fps
        self.augment, self.hflip = augment, hflip
        self.crop_scale, self.crop_aspect = tuple(crop_scale), tuple(crop_aspect)
        self.channels = channels
        self.seed = seed
        self.pad_short = pad_short
        self.paths = self._list(root)
        parents = [os.path.basename(os.path.dirname(p)) for p in self.paths]
        self.classes = sorted(set(parents))
        self.targets = [self.classes.index(p) for p in parents]
        if split is not None:
            keep = split_by_file(self.paths, root, split)
            self.paths, self.targets = [self.paths[i] for i in keep], [self.targets[i] for i in keep]
        self._counts: dict[int, int] = {}  # frame counts that had to be counted (no count in the header)
        self.skipped = SkippedFiles(len(self.paths), root, max_bad_fraction)

    def __len__(self) -> int:
        return len(self.paths)

    def _list(self, root: str) -> list[str]:
        """The videos under `root`, sorted (their parent folders name the classes)."""
        return list_videos(root)

    def _video(self, index: int) -> Video:
        """Video `index`, open (its frame count passed where it had to be counted before)."""
        return Video(self.paths[index], num_frames=self._counts.get(index))

    def frame_step(self, info: VideoInfo) -> Fraction:
        """Source frames between two clip frames: `frame_stride`, or the video's rate / `fps`."""
        return info.fps / Fraction(self.fps) if self.fps > 0 else Fraction(self.frame_stride)

    def _frame_numbers(self, key: SampleKey, info: VideoInfo, rng: np.random.Generator) -> list[int]:
        """Source frame numbers of item `key`'s clip; VideoTooShortError where the video is shorter than a
        clip and `pad_short` is off."""
        spacing = self.frame_step(info)
        span = clip_span(self.frames, spacing)
        if not self.pad_short and info.num_frames < span:
            raise VideoTooShortError(f"video {self.paths[key.index]!r} is too short: {info.num_frames} frames, a "
                                     f"clip spans {span} (data.pad_short pads it instead)")
        return clip_frame_numbers(info.num_frames, self.frames, spacing, rng, key.part, key.parts)

    def _remember_count(self, index: int, count: int) -> None:
        """Keep a counted frame count, forgetting the oldest beyond COUNTS_KEPT (memory stays bounded on
        a million files)."""
        self._counts[index] = count
        if len(self._counts) > COUNTS_KEPT:
            del self._counts[next(iter(self._counts))]

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        key = SampleKey(*key)
        index = key.index
        if not 0 <= index < len(self.paths):
            raise IndexError(f"video index {index} out of range [0, {len(self.paths)})")
        for candidate in [*range(index, len(self.paths)), *range(index)]:
            if candidate in self.skipped:
                continue
            try:
                return self._read(key._replace(index=candidate))
            except (VideoDecodeError, VideoTooShortError) as err:
                self.skipped.skip(candidate, str(err))
        # Reached where other workers skipped the last files (this process raised otherwise, in skip).
        raise NoUsableVideoError(f"no video under {self.root!r} decodes or is long enough: all {len(self)} skipped")

    def _read(self, key: SampleKey) -> dict:
        """Item `key` read from video `key.index` (one open of the file); raises VideoDecodeError where it does
        not decode and VideoTooShortError where it is shorter than a clip (and `pad_short` is off)."""
        index = key.index
        pixel_format = "rgb24" if self.channels == 3 else "gray"
        rng = np.random.default_rng([self.seed, key.step, key.slot, index])  # draws start, then box and flip
        with self._video(index) as video:
            if video.counted:
                self._remember_count(index, video.info.num_frames)
            numbers = self._frame_numbers(key, video.info, rng)
            decoded = video.read(numbers, pixel_format)
        if not decoded:
            raise VideoDecodeError(f"cannot decode video {self.paths[index]!r}: no frames decoded")
        # Missing numbers lie past the end (a short video with pad_short, or a header that over-counts):
        # repeat the last frame actually decoded.
        last = decoded[max(decoded)]
        clip = np.stack([decoded.get(n, last) for n in numbers])
        clip_t = torch.from_numpy(clip).permute(0, 3, 1, 2)  # [T, C, H, W]
        height, width = clip_t.shape[-2:]
        if self.augment:
            box = random_resized_box(height, width, self.crop_scale, self.crop_aspect, rng)
            flip = self.hflip and bool(rng.random() < 0.5)
        else:
            box, flip = center_box(height, width), False
        return {
            "clip": crop_resize(clip_t, box, self.size, flip).contiguous(),
            "labels": {"class": self.targets[index]},
            "step": key.step,
        }
