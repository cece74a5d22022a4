"""Which frames a clip takes: a function of the video's length, the clip's shape and a seeded generator."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def clip_span(frames: int, frame_step: Fraction) -> int:
    """Source frames a clip of ``frames`` frames ``frame_step`` apart covers, first to last inclusive."""
    return round((frames - 1) * frame_step) + 1


def clip_frame_numbers(
    num_frames: int, frames: int, frame_step: Fraction, rng: np.random.Generator, part: int = 0, parts: int = 1
) -> list[int]:
    """Source frame numbers of a clip: ``frames`` numbers ``frame_step`` apart (rounded to the nearest frame),
    from a start drawn uniformly where the whole clip fits in part ``part`` of ``parts`` equal parts of the
    video (V-JEPA's several clips per video). Where the part is shorter than the clip, the clip starts at the
    part's start, moved back as far as needed to end in the video; a video shorter than the clip starts at
    frame 0 and its numbers run past the end (the caller pads or skips it)."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    span = clip_span(frames, frame_step)
    low, high = part * num_frames // parts, (part + 1) * num_frames // parts  # the part: frames [low, high)
    if high - low >= span:
        start = low + int(rng.integers(high - low - span + 1))
    else:
        start = max(min(low, num_frames - span), 0)
    return [start + round(k * frame_step) for k in range(frames)]
