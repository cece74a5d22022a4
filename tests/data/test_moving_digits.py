"""MovingDigits: shapes, determinism, motion physics, labels and the train/val split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from hjepa_fast.data import MovingDigits, build_dataset


@pytest.fixture(scope="module")
def train() -> MovingDigits:
    return MovingDigits("train", frames=12, size=32, digit_size=16, seed=0)


def centroids(clip: torch.Tensor) -> np.ndarray:
    """Pixel-mass centroid (x, y) per frame, float [T, 2], of a uint8 clip [T, 1, H, W]."""
    mass = clip[:, 0].double().numpy()
    ys, xs = np.mgrid[: mass.shape[1], : mass.shape[2]]
    total = mass.sum((1, 2))
    return np.stack([(mass * xs).sum((1, 2)) / total, (mass * ys).sum((1, 2)) / total], axis=1)


def nonzero_crop(image: torch.Tensor) -> torch.Tensor:
    """The smallest box of a 2-D image [H, W] holding all its nonzero pixels."""
    rows, cols = image.nonzero(as_tuple=True)
    return image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def test_item_contract(train: MovingDigits) -> None:
    item = train[(7, 123)]
    assert item["clip"].shape == (12, 1, 32, 32)
    assert item["clip"].dtype == torch.uint8
    assert item["step"] == 123
    assert set(item["labels"]) == {"digit", "direction", "speed"}
    assert train.channels == 1 and train.frames == 12 and train.size == 32
    assert len(train) == 4 * len(train.image_indices)
    assert len(MovingDigits("val", num_clips=10)) == 10


def test_deterministic_per_index_not_global_rng(train: MovingDigits) -> None:
    first = train[(3, 0)]
    torch.manual_seed(999)
    np.random.seed(999)
    again = MovingDigits("train", frames=12, size=32, digit_size=16, seed=0)[(3, 55)]
    assert torch.equal(first["clip"], again["clip"]) and first["labels"] == again["labels"]
    other_seed = MovingDigits("train", frames=12, size=32, digit_size=16, seed=1)[(3, 0)]
    assert not torch.equal(first["clip"], other_seed["clip"])
    assert not torch.equal(first["clip"], train[(4, 0)]["clip"])


def test_digit_moves_inside_frame(train: MovingDigits) -> None:
    for index in range(20):
        clip = train[(index, 0)]["clip"]
        mass = clip.double().sum((1, 2, 3))
        assert mass[0] > 0
        # The whole sprite is always pasted inside the frame, so no pixel mass is ever cut off.
        assert torch.allclose(mass, mass[0])
        assert not torch.equal(clip[0], clip[-1])
        step = np.abs(np.diff(centroids(clip), axis=0))
        assert step.max() <= 3.0  # speed 1-2 px/frame plus rounding to whole pixels


def test_direction_label_matches_motion(train: MovingDigits) -> None:
    """Axis directions never move the other axis; most clips start moving the labelled way.

    Only most, because a clip that starts near a wall bounces within the first frames.
    """
    agree = 0
    for index in range(64):
        item = train[(index, 0)]
        direction = item["labels"]["direction"]
        path = centroids(item["clip"])
        moved = np.abs(path - path[0]).max(0) > 0  # (x moved, y moved) over the clip
        expected = {0: (True, False), 4: (True, False), 2: (False, True), 6: (False, True)}
        assert tuple(moved) == expected.get(direction, (True, True))
        angle = direction * np.pi / 4
        delta = path[3] - path[0]
        agree += float(np.dot(delta, [np.cos(angle), np.sin(angle)])) > 0.5 * np.linalg.norm(delta)
    assert agree >= 0.7 * 64


def test_labels_match_sklearn_image(train: MovingDigits) -> None:
    digits = load_digits()
    n = len(train.image_indices)
    directions = set()
    for index in [0, 1, 2, n - 1, n, n + 5, 3 * n + 9]:
        item = train[(index, 0)]
        image = train.image_indices[index % n]
        assert item["labels"]["digit"] == digits.target[image]
        assert 0 <= item["labels"]["direction"] < 8
        directions.add(item["labels"]["direction"])
        # Frame 0 shows exactly that image upscaled: compare the bounding boxes of the nonzero pixels.
        small = torch.from_numpy(digits.images[image]).float()[None, None] * (255 / 16)
        sprite = F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
        assert torch.equal(
            nonzero_crop(item["clip"][0, 0]), nonzero_crop(sprite[0, 0].round().to(torch.uint8))
        )
    assert len(directions) > 1


def test_splits_disjoint_and_cover_all_images() -> None:
    train_ids = MovingDigits("train").image_indices
    val_ids = MovingDigits("val").image_indices
    assert set(train_ids).isdisjoint(val_ids)
    assert len(set(train_ids) | set(val_ids)) == 1797
    assert len(train_ids) == round(0.8 * 1797)
    # The split is fixed: it must not move with the clip seed.
    assert np.array_equal(MovingDigits("val", seed=5).image_indices, val_ids)


def test_bad_arguments_refused() -> None:
    with pytest.raises(ValueError, match="split"):
        MovingDigits("test")
    with pytest.raises(ValueError, match="digit_size"):
        MovingDigits(size=16, digit_size=20)
    with pytest.raises(IndexError):
        MovingDigits("val", num_clips=3)[(3, 0)]


def test_build_dataset_moving_digits() -> None:
    ds = build_dataset("moving_digits", "val", frames=4, size=24, channels=1, root=None, seed=2)
    assert isinstance(ds, MovingDigits) and ds.split == "val"
    assert ds[(0, 0)]["clip"].shape == (4, 1, 24, 24)
    with pytest.raises(ValueError, match="channel"):
        build_dataset("moving_digits", "val", frames=4, size=24, channels=3, root=None, seed=2)
    with pytest.raises(ValueError, match="moving_digits, video_folder"):
        build_dataset("imagenet", "val", frames=4, size=24, channels=1, root=None, seed=2)


def test_one_digit_on_black_is_the_original_set_and_the_options_add_content() -> None:
    plain = MovingDigits("train", frames=12, seed=0)
    busy = MovingDigits("train", frames=12, seed=0, digits=3, background="texture")
    for index in range(8):
        a, b = plain[(index, 0)], busy[(index, 0)]
        assert a["labels"] == b["labels"]  # the labelled digit keeps its image and motion
        np.testing.assert_array_equal(plain.positions(index), busy.positions(index))
        clip_a, clip_b = a["clip"][:, 0], b["clip"][:, 0]
        labelled = clip_a > 0  # the labelled digit is drawn on top of everything else
        assert torch.equal(clip_b[labelled], clip_a[labelled])
        # every 8x8 token of every frame shows something, and the background moves between frames
        tokens = clip_b.view(12, 4, 8, 4, 8).amax(dim=(2, 4))
        assert (tokens > 0).all()
        assert not torch.equal(clip_b[0][~labelled[0] & ~labelled[1]], clip_b[1][~labelled[0] & ~labelled[1]])
    again = MovingDigits("train", frames=12, seed=0, digits=3, background="texture")[(5, 9)]["clip"]
    assert torch.equal(again, busy[(5, 0)]["clip"])


def test_distractor_digits_move_on_their_own() -> None:
    one = MovingDigits("train", frames=12, seed=0)
    two = MovingDigits("train", frames=12, seed=0, digits=2)
    moved = 0
    for index in range(16):
        extra = (two[(index, 0)]["clip"][:, 0] > 0) & ~(one[(index, 0)]["clip"][:, 0] > 0)
        assert extra.any()  # the distractor is visible somewhere
        moved += not torch.equal(extra[0], extra[-1])
    assert moved >= 12


def test_bad_scene_options_are_refused() -> None:
    with pytest.raises(ValueError, match="digits"):
        MovingDigits(digits=0)
    with pytest.raises(ValueError, match="background"):
        MovingDigits(background="stars")
