"""The data.* keys of the video pipeline: defaults, ranges and the rules that tie them to the data set."""

from __future__ import annotations

import pytest

from hjepa_fast.config import ConfigError, load_config

VIDEO = ["data.dataset=video_folder", "data.root=/videos", "model.in_chans=3"]


def test_video_keys_load() -> None:
    cfg = load_config(None, [*VIDEO, "data.fps=7.5", "data.clips_per_video=2"])
    assert (cfg.data.fps, cfg.data.clips_per_video) == (7.5, 2)


@pytest.mark.parametrize("override, message", [
    ("data.fps=-1", "data.fps"),
    ("data.clips_per_video=0", "data.clips_per_video"),
])
def test_bad_values_are_refused_by_name(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*VIDEO, override])


def test_clips_per_video_needs_a_video_folder() -> None:
    with pytest.raises(ConfigError, match="clips_per_video.*video_folder"):
        load_config(None, ["data.clips_per_video=2"])


def test_augmentation_keys_and_only_the_training_set_is_augmented(tmp_path) -> None:
    from video_files import write_video

    from hjepa_fast.train.builders import build_dataset_for

    for name in ("a.mp4", "b.mp4"):
        write_video(tmp_path / name, 4, "mpeg4")
    cfg = load_config(None, ["data.dataset=video_folder", f"data.root={tmp_path}", "model.in_chans=3",
                             "data.augment=true", "data.crop_scale=[0.5, 0.9]", "data.hflip=true"])
    train = build_dataset_for(cfg, "train", train=True)
    assert (train.augment, train.crop_scale, train.crop_aspect, train.hflip) == (True, (0.5, 0.9), (0.75, 1.35), True)
    assert not build_dataset_for(cfg, "train").augment and not build_dataset_for(cfg, "val").augment


@pytest.mark.parametrize("override, message", [
    ("data.crop_scale=[0.9, 0.5]", "data.crop_scale.*low <= high"),
    ("data.crop_scale=[0.0, 0.5]", r"data.crop_scale\[0\]"),
    ("data.crop_aspect=[1.0]", "data.crop_aspect.*low, high"),
])
def test_bad_crop_ranges_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*VIDEO, override])


def test_augment_needs_a_video_folder() -> None:
    with pytest.raises(ConfigError, match="data.augment needs data.dataset=video_folder"):
        load_config(None, ["data.augment=true"])
