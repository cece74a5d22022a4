"""Training on a folder of real video files (decoded with PyAV), 3 channels, through the CLI."""
from __future__ import annotations

import pytest
from video_files import write_video

from hjepa_fast.cli import main

pytest.importorskip("av")


def test_train_on_a_video_folder(tmp_path):
    videos = tmp_path / "videos"
    for name in ("a", "b"):
        (videos / name).mkdir(parents=True)
        write_video(videos / name / "clip.mp4", 12, "mpeg4")
    assert main(["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", "data.dataset=video_folder",
                 f"data.root={videos}", "model.in_chans=3", "data.frames=8", "data.frame_stride=1",
                 "model.temporal_strides=[1,2,2]", "masks.strategies=[multiblock,multiblock,multiblock]",
                 "masks.num_blocks=2", "masks.min_keep=4", "train.steps=2", "train.batch_size=2",
                 f"train.out_dir={tmp_path}", "train.run_name=v"]) == 0
    assert (tmp_path / "v" / "checkpoint.pt").is_file()
