"""The moving digits' ground truth for the probes: the speed label and the per-frame digit position."""
from __future__ import annotations

import numpy as np

from hjepa_fast.data.moving_digits import SPEED_BINS, MovingDigits


def test_positions_are_where_the_digit_is_drawn_and_speed_bins_are_balanced():
    data = MovingDigits("val", frames=8, size=32, digit_size=16)
    speeds = []
    for index in range(60):
        item, centre = data[(index, 0)], data.positions(index)
        assert centre.shape == (8, 2) and centre.dtype == np.float32
        clip = item["clip"][:, 0].numpy()
        for frame, (x, y) in zip(clip, centre):
            top, left = int(y - 8), int(x - 8)  # the sprite's box; nothing is drawn outside it
            assert frame.sum() == frame[top:top + 16, left:left + 16].sum() > 0
        speeds.append(item["labels"]["speed"])
    assert set(speeds) == set(range(SPEED_BINS))
    assert min(np.bincount(speeds)) >= 10
