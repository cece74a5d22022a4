"""Bad files in a video folder: skipped, each logged once (across DataLoader workers), fatal past a fraction."""

from __future__ import annotations

import logging
import os
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from video_files import write_video

from hjepa_fast.cli import main
from hjepa_fast.data import VideoFolder
from hjepa_fast.data.skips import NoUsableVideoError, SkippedFiles
from hjepa_fast.errors import DataError

av = pytest.importorskip("av")
BAD = ("corrupt.mp4", "empty.mp4", "audio_only.mkv", "short.mp4")


def write_audio_only(path: Path) -> None:
    """A valid Matroska file with one FLAC audio stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=8000)
        for k in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 8000, k * 1024, Fraction(1, 8000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/good/: three 12-frame videos; train/bad/: the four kinds of bad file (7 files, 4 bad)."""
    root = tmp_path_factory.mktemp("bad_files")
    good, bad = root / "train" / "good", root / "train" / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    for k in range(3):
        write_video(good / f"v{k}.mp4", 12, "mpeg4")
    (bad / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (bad / "empty.mp4").write_bytes(b"")
    write_audio_only(bad / "audio_only.mkv")
    write_video(bad / "short.mp4", 3, "mpeg4")
    return root


def test_training_completes_and_reports_each_bad_file_once(folder: Path, tmp_path: Path) -> None:
    """`hjepa train` with 2 workers, 4 steps of 4 clips (every file visited about twice): the run ends with a
    checkpoint and each bad file has exactly one log line, whichever worker met it first."""
    log_file = tmp_path / "skips.log"
    handler = logging.FileHandler(log_file)  # forked workers inherit it (pytest's handlers stay in-process)
    logger = logging.getLogger("hjepa_fast.data")
    logger.addHandler(handler)
    try:
        status = main(["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", "data.dataset=video_folder",
                       f"data.root={folder}", "model.in_chans=3", "data.frames=8", "model.temporal_strides=[1,2,2]",
                       "masks.strategies=[multiblock,multiblock,multiblock]", "masks.num_blocks=2",
                       "masks.min_keep=4", "model.img_size=24", "model.patch_size=8", "model.encoder_dims=[32,32,32]",
                       "model.encoder_depths=[1,1,1]", "model.encoder_heads=[2,2,2]", "model.predictor_dims=[16,16,16]",
                       "model.predictor_depths=[1,1,1]", "model.predictor_heads=[2,2,2]", "train.steps=4",
                       "train.batch_size=4", "data.num_workers=2", "data.max_bad_fraction=0.6",
                       f"train.out_dir={tmp_path}", "train.run_name=r"])
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert status == 0 and (tmp_path / "r" / "checkpoint.pt").is_file()
    lines = log_file.read_text().splitlines()
    assert sorted(name for line in lines for name in BAD if f"/{name}'" in line) == sorted(BAD), lines
    assert len(lines) == len(BAD)
    assert not any("/good/" in line for line in lines)


def test_items_of_bad_files_read_the_next_usable_video(folder: Path) -> None:
    ds = VideoFolder(str(folder / "train"), frames=8, size=16, max_bad_fraction=0.6)
    labels = [ds[(i, 0)]["labels"]["class"] for i in range(len(ds))]
    assert labels == [ds.classes.index("good")] * len(ds)
    assert len(ds.skipped) == len(BAD) and all(ds.paths[i].endswith(BAD) for i in range(len(ds)) if i in ds.skipped)


def test_past_the_bad_fraction_the_run_stops_naming_the_setting(folder: Path) -> None:
    ds = VideoFolder(str(folder / "train"), frames=8, size=16, max_bad_fraction=0.5)  # 4 of 7 > 3.5
    with pytest.raises(DataError, match=r"4 of 7 videos .* more than data.max_bad_fraction=0.5; last: .*/bad/"):
        for i in range(len(ds)):
            ds[(i, 0)]


def test_padding_short_videos_keeps_them(folder: Path) -> None:
    ds = VideoFolder(str(folder / "train"), frames=8, size=16, max_bad_fraction=0.6, pad_short=True)
    short = next(i for i, p in enumerate(ds.paths) if p.endswith("short.mp4"))
    assert ds[(short, 0)]["labels"]["class"] == ds.classes.index("bad")


def test_every_file_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.mp4").write_bytes(os.urandom(100))
    with pytest.raises(NoUsableVideoError, match="no video under .* decodes.*b.mp4"):
        VideoFolder(str(tmp_path), max_bad_fraction=1.0)[(0, 0)]


def test_skip_flags_travel_to_worker_starts_and_plain_copies_are_independent() -> None:
    flags = SkippedFiles(4, "root", 1.0)
    flags.skip(2, "x")
    copy = pickle.loads(pickle.dumps(flags))
    copy.skip(1, "y")
    assert 2 in copy and 1 in copy and 1 not in flags and len(flags) == 1
    with pytest.raises(ValueError, match="max_fraction"):
        SkippedFiles(4, "root", 1.5)


@pytest.mark.slow  # spawned workers import torch afresh: ~10 s
def test_spawned_workers_share_the_skip_flags_with_the_parent(folder: Path) -> None:
    """Workers started by spawn (pickled data set) mark the parent's flags: the memory is shared."""
    from hjepa_fast.data import StepBatchSampler

    ds = VideoFolder(str(folder / "train"), frames=8, size=16, max_bad_fraction=0.6)
    sampler = StepBatchSampler(len(ds), 7, seed=0, total_steps=2)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2, multiprocessing_context="spawn")
    assert sum(len(batch["clip"]) for batch in loader) == 14
    assert len(ds.skipped) == len(BAD)
