"""clip_frame_numbers: where a clip may start, for whole videos, equal parts and videos shorter than a clip."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from hjepa_fast.data.clips import clip_frame_numbers, clip_span


def starts(num_frames: int, frames: int, step: Fraction, part: int = 0, parts: int = 1) -> set[int]:
    return {clip_frame_numbers(num_frames, frames, step, np.random.default_rng(s), part, parts)[0] for s in range(300)}


def test_every_start_where_the_clip_fits_is_drawn() -> None:
    assert clip_span(4, Fraction(3)) == 10
    assert starts(20, 4, Fraction(3)) == set(range(11))  # last start 10: frames 10, 13, 16, 19
    numbers = clip_frame_numbers(30, 5, Fraction(5, 2), np.random.default_rng(1))
    assert [n - numbers[0] for n in numbers] == [0, 2, 5, 8, 10]  # nearest frame to k * 2.5 (half to even)


def test_parts() -> None:
    assert starts(30, 4, Fraction(1), part=1, parts=3) == set(range(10, 17))  # part [10, 20), span 4
    assert starts(30, 4, Fraction(3), part=2, parts=3) == {20}  # span 10 fills [20, 30) exactly
    assert starts(30, 4, Fraction(4), part=2, parts=3) == {17}  # span 13 > part: moved back to end at 29
    assert starts(8, 4, Fraction(4), part=1, parts=2) == {0}  # shorter than the clip: from frame 0
    with pytest.raises(ValueError, match="part"):
        clip_frame_numbers(30, 4, Fraction(1), np.random.default_rng(0), part=3, parts=3)
