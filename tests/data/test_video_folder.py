"""VideoFolder on tiny real videos written here with PyAV: decoding, clip choice, padding, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from video_files import LEVEL0, LEVEL_STEP, write_video

from hjepa_fast.data import SampleKey, StepBatchSampler, VideoFolder, build_dataset
from hjepa_fast.data.augment import center_box, crop_resize

av = pytest.importorskip("av")

def frame_numbers(clip: torch.Tensor) -> list[int]:
    """Source frame number of each frame of a clip [T, C, H, W], read back from the background level."""
    median = clip.flatten(1).float().median(dim=1).values
    return [round((m - LEVEL0) / LEVEL_STEP) for m in median.tolist()]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cat/long.mp4 (20 frames, mpeg4), dog/long.mkv (20, ffv1: no count in header), dog/short.mp4 (3)."""
    base = tmp_path_factory.mktemp("videos")
    (base / "cat").mkdir()
    (base / "dog").mkdir()
    write_video(base / "cat" / "long.mp4", 20, "mpeg4")
    write_video(base / "dog" / "long.mkv", 20, "ffv1")
    write_video(base / "dog" / "short.mp4", 3, "mpeg4")
    (base / "dog" / "notes.txt").write_text("not a video")
    return base


def test_listing_and_labels(root: Path) -> None:
    ds = VideoFolder(str(root), frames=4, size=16, pad_short=True)
    assert len(ds) == 3
    assert [os.path.relpath(p, root) for p in ds.paths] == ["cat/long.mp4", "dog/long.mkv", "dog/short.mp4"]
    assert ds.classes == ["cat", "dog"]
    assert [ds[(i, 0)]["labels"] for i in range(3)] == [{"class": 0}, {"class": 1}, {"class": 1}]


@pytest.mark.parametrize("channels", [3, 1])
def test_item_contract(root: Path, channels: int) -> None:
    item = VideoFolder(str(root), frames=5, size=16, channels=channels)[(1, 77)]
    assert item["clip"].shape == (5, channels, 16, 16)
    assert item["clip"].dtype == torch.uint8
    assert item["step"] == 77


@pytest.mark.parametrize("index", [0, 1])  # header frame count (mp4) and counted by decoding (mkv)
def test_clip_is_consecutive_strided_frames(root: Path, index: int) -> None:
    ds = VideoFolder(str(root), frames=6, size=16, frame_stride=3)
    numbers = frame_numbers(ds[(index, 0)]["clip"])
    assert numbers == [numbers[0] + 3 * k for k in range(6)]
    assert 0 <= numbers[0] and numbers[-1] <= 19


def test_clip_is_a_function_of_seed_step_slot_and_index(root: Path) -> None:
    ds = VideoFolder(str(root), frames=4, size=16)
    first = ds[SampleKey(0, 3, 1)]["clip"]
    assert torch.equal(first, VideoFolder(str(root), frames=4, size=16)[SampleKey(0, 3, 1)]["clip"])
    for vary in ({"step": 4}, {"slot": 2}):  # offsets differ across steps, slots and seeds (17 possible values)
        starts = {frame_numbers(ds[SampleKey(0, 3, 1)._replace(**{k: v + d for k, v in vary.items()})]["clip"])[0]
                  for d in range(8)}
        assert len(starts) > 1
    seeds = {frame_numbers(VideoFolder(str(root), frames=4, size=16, seed=s)[(0, 0)]["clip"])[0] for s in range(8)}
    assert len(seeds) > 1


def test_two_epochs_draw_different_clips_and_a_resumed_run_the_same(root: Path) -> None:
    """Batch 3 over 3 videos: one epoch a step. Each video's clip changes between epochs; a sampler started
    at step 2 (a resumed run) yields exactly the batches of steps 2.. of an uninterrupted one."""
    ds = VideoFolder(str(root), frames=4, size=16, pad_short=True)

    def batches(start: int, steps: int) -> list[dict]:
        sampler = StepBatchSampler(len(ds), 3, seed=5, start_step=start, total_steps=steps)
        return [{key.index: ds[key]["clip"] for key in keys} for keys in sampler]

    full = batches(0, 4)
    starts = [[frame_numbers(epoch[v])[0] for epoch in full] for v in (0, 1)]  # the two 20-frame videos
    assert all(len(set(s)) > 1 for s in starts), starts
    resumed = batches(2, 2)
    for a, b in zip(full[2:], resumed, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[v], b[v]) for v in a)


@pytest.mark.parametrize("parts", [2, 3])
def test_several_clips_per_video_come_from_its_equal_parts(root: Path, parts: int) -> None:
    """20 frames in `parts` parts: the clip of part p starts in it, and for 3 parts (6-7 frames each) the
    4-frame clip fits inside."""
    ds = VideoFolder(str(root), frames=4, size=16)
    for part in range(parts):
        low, high = part * 20 // parts, (part + 1) * 20 // parts
        for step in range(6):
            numbers = frame_numbers(ds[SampleKey(0, step, 0, part, parts)]["clip"])
            assert low <= numbers[0] and numbers[-1] < high, (part, numbers)


def test_short_video_padded_with_last_frame(root: Path) -> None:
    clip = VideoFolder(str(root), frames=8, size=16, pad_short=True)[(2, 0)]["clip"]
    assert frame_numbers(clip) == [0, 1, 2, 2, 2, 2, 2, 2]
    assert all(torch.equal(clip[2], clip[k]) for k in range(3, 8))


def test_grayscale_matches_rgb_brightness(root: Path) -> None:
    rgb = VideoFolder(str(root), frames=4, size=16, channels=3)[(0, 0)]["clip"]
    gray = VideoFolder(str(root), frames=4, size=16, channels=1)[(0, 0)]["clip"]
    assert (rgb.float().mean((1, 2, 3)) - gray.float().mean((1, 2, 3))).abs().max() < 8


def test_center_crop_then_resize() -> None:
    """The middle square is kept, then resized: the outer sixths of a 48-wide image drop."""
    clip = torch.zeros(2, 1, 32, 48, dtype=torch.uint8)
    clip[..., 16:32] = 100
    clip[..., 32:] = 200
    out = crop_resize(clip, center_box(32, 48), 16)  # columns 8..40 -> 16 wide
    assert out.shape == (2, 1, 16, 16) and out.dtype == torch.uint8
    assert (out[..., 5:11] == 100).all()  # the 100-band, away from blended edges
    assert out[..., 0].float().mean() < 100 < out[..., -1].float().mean()
    assert torch.equal(crop_resize(clip[..., :32], center_box(32, 32), 32), clip[..., :32])


def test_pickles_for_worker_processes(root: Path) -> None:
    ds = VideoFolder(str(root), frames=4, size=16)
    assert torch.equal(pickle.loads(pickle.dumps(ds))[(1, 0)]["clip"], ds[(1, 0)]["clip"])


def test_errors(root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoFolder(str(missing))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no videos here")
    with pytest.raises(ValueError, match=r"empty.*\.mp4.*\.webm"):
        VideoFolder(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.mp4").write_text("this is text, not a video")
    with pytest.raises(RuntimeError, match="broken.mp4"):
        VideoFolder(str(tmp_path / "bad"))[(0, 0)]
    with pytest.raises(ValueError, match="channels"):
        VideoFolder(str(root), channels=2)
    with pytest.raises(IndexError):
        VideoFolder(str(root))[(3, 0)]


def test_build_dataset_video_folder(root: Path, tmp_path: Path) -> None:
    flat = build_dataset("video_folder", "val", frames=4, size=16, channels=1, root=str(root), seed=0)
    assert isinstance(flat, VideoFolder) and flat.root == str(root) and flat.channels == 1
    split_root = tmp_path / "split"
    (split_root / "train" / "cat").mkdir(parents=True)
    write_video(split_root / "train" / "cat" / "a.mp4", 4, "mpeg4")
    train = build_dataset(
        "video_folder", "train", frames=4, size=16, channels=3, root=str(split_root), seed=0
    )
    assert train.root == str(split_root / "train")
    with pytest.raises(ValueError, match="root"):
        build_dataset("video_folder", "train", frames=4, size=16, channels=3, root=None, seed=0)


def test_a_corrupt_video_is_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One bad file does not end a run: its items read the next video that decodes, and a log line names it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.mp4").write_bytes(os.urandom(3000))
    write_video(tmp_path / "a" / "good.mp4", 6, "mpeg4")
    ds = VideoFolder(str(tmp_path), frames=4, size=16, max_bad_fraction=0.5)
    assert [os.path.basename(p) for p in ds.paths] == ["bad.mp4", "good.mp4"]
    with caplog.at_level("WARNING", logger="hjepa_fast.data"):
        item = ds[(0, 0)]
    assert "bad.mp4" in caplog.text
    assert torch.equal(item["clip"], ds[(1, 0)]["clip"])
