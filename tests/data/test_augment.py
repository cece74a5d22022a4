"""Random resized crops and flips on uint8 clips: the box rule, the resize, and VideoFolder's use of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hjepa_fast.data.augment import Box, center_box, crop_resize, random_resized_box


def test_random_boxes_respect_scale_aspect_and_frame() -> None:
    height, width = 48, 64
    rng = np.random.default_rng(0)
    boxes = [random_resized_box(height, width, (0.3, 1.0), (0.75, 1.35), rng) for _ in range(500)]
    for b in boxes:
        assert 0 <= b.top and b.top + b.height <= height and 0 <= b.left and b.left + b.width <= width
        assert 0.3 - 0.05 <= b.height * b.width / (height * width) <= 1.0  # rounding to whole pixels
        assert 0.75 - 0.05 <= b.width / b.height <= 1.35 + 0.05
    areas = [b.height * b.width / (height * width) for b in boxes]
    assert min(areas) < 0.35 and max(areas) > 0.9  # the whole range is drawn
    assert len({(b.top, b.left) for b in boxes}) > 100


def test_a_box_that_never_fits_falls_back_to_the_centred_crop_of_the_nearest_aspect() -> None:
    box = random_resized_box(48, 64, (1.0, 1.0), (0.5, 0.6), np.random.default_rng(0))  # 4:3 frame, too wide
    assert box == Box(0, (64 - 29) // 2, 48, 29)  # width 0.6 * 48 = 28.8 -> 29
    assert center_box(48, 64) == Box(0, 8, 48, 48) and center_box(64, 48) == Box(8, 0, 48, 48)


def test_crop_resize_keeps_uint8_takes_the_box_and_flips() -> None:
    clip = torch.zeros(2, 3, 40, 60, dtype=torch.uint8)
    clip[..., :20, :30] = 200  # top-left quadrant
    clip[..., :20, 25:30] = 100  # its right edge band
    out = crop_resize(clip, Box(0, 0, 20, 30), 10)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 10, 10)
    assert (out[..., :, :7] == 200).all() and (out[..., :, -1] == 100).all()
    assert torch.equal(crop_resize(clip, Box(0, 0, 20, 30), 10, flip=True), out.flip(-1))
    assert (crop_resize(clip, Box(20, 30, 20, 30), 10) == 0).all()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    from video_files import write_video  # the digit sits in the left third of a 48x32 frame

    root = tmp_path_factory.mktemp("augment")
    (root / "a").mkdir()
    write_video(root / "a" / "v.mp4", 12, "mpeg4")
    return str(root)


def test_video_folder_augments_only_when_asked_and_deterministically(folder: str) -> None:
    from hjepa_fast.data import SampleKey, VideoFolder

    plain = VideoFolder(folder, frames=2, size=16)
    ignored = VideoFolder(folder, frames=2, size=16, crop_scale=(0.3, 0.3), hflip=True)  # augment off: unused
    small = VideoFolder(folder, frames=2, size=16, augment=True, crop_scale=(0.3, 0.3))
    for step in range(4):
        key = SampleKey(0, step, 1)
        assert torch.equal(plain[key]["clip"], ignored[key]["clip"])
        assert not torch.equal(plain[key]["clip"], small[key]["clip"])  # same frames, a smaller box
    aug = VideoFolder(folder, frames=2, size=16, augment=True, crop_scale=(1.0, 1.0), crop_aspect=(1.5, 1.5),
                      hflip=True)
    # Whole-frame boxes: only the flip varies. The digit is left of centre, or right of it when mirrored.
    sides = []
    for step in range(16):
        item = aug[SampleKey(0, step)]["clip"].float()
        assert torch.equal(aug[SampleKey(0, step)]["clip"], item.byte())  # same key, same clip
        frame = item[0] - item[0].median()
        sides.append(bool(frame[..., :8].sum() > frame[..., 8:].sum()))
    assert 3 <= sum(sides) <= 13  # both orientations occur
