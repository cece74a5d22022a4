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
