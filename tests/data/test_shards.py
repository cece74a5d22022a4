"""Shards: a video folder packed into WebDataset-layout tars with an index reads exactly as the folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from video_files import write_video

from hjepa_fast.data import SampleKey, VideoFolder, VideoShards, build_dataset
from hjepa_fast.data.shards import main, write_shards
from hjepa_fast.errors import DataError

pytest.importorskip("av")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cat/: three videos (12, 16, 20 frames), dog/: two and a corrupt file; no train/val split."""
    root = tmp_path_factory.mktemp("to_shard")
    for label, counts in (("cat", (12, 16, 20)), ("dog", (14, 18))):
        (root / label).mkdir()
        for k, count in enumerate(counts):
            write_video(root / label / f"{label}{k}.mp4", count, "mpeg4")
    (root / "dog" / "zz_corrupt.mp4").write_bytes(b"\x00" * 700)
    return root


def test_shards_read_as_the_folder_item_for_item(folder: Path, tmp_path: Path) -> None:
    """Small shards (a new one past 10 kB): every item, clip and label, equals the folder's, by the same keys;
    skipped files too; and through an fsspec URL."""
    (index,) = write_shards(str(folder), str(tmp_path / "shards"), shard_bytes=10_000)
    shards = sorted(p.name for p in (tmp_path / "shards").glob("*.tar"))
    assert len(shards) > 1 and json.loads(Path(index).read_text())["shards"] == shards
    options = dict(frames=4, size=16, augment=True, hflip=True, max_bad_fraction=0.5)
    plain = VideoFolder(str(folder), **options)
    for root in (str(tmp_path / "shards"), f"file://{tmp_path / 'shards'}"):
        packed = VideoShards(root, **options)
        assert packed.classes == plain.classes and packed.targets == plain.targets
        assert [Path(p).name for p in packed.paths] == [Path(p).name for p in plain.paths]
        for key in [SampleKey(i, step, slot) for i in range(len(plain)) for step, slot in ((0, 0), (3, 5))]:
            a, b = plain[key], packed[key]
            assert torch.equal(a["clip"], b["clip"]) and a["labels"] == b["labels"], key
        assert len(packed.skipped) == len(plain.skipped) == 1


def test_webdataset_layout_and_the_split_by_file(folder: Path, tmp_path: Path) -> None:
    write_shards(str(folder), str(tmp_path / "s"))
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        names = tar.getnames()
        first_meta = json.load(tar.extractfile(names[1]))
    assert names[:2] == ["000000000.mp4", "000000000.json"] and first_meta == {"path": "cat/cat0.mp4"}
    for split in ("train", "val"):
        built = build_dataset("video_folder", split, frames=4, size=16, channels=3, root=str(tmp_path / "s"), seed=0)
        folder_split = VideoFolder(str(folder), frames=4, size=16, split=split)
        assert isinstance(built, VideoShards)
        assert [Path(p).name for p in built.paths] == [Path(p).name for p in folder_split.paths]


def test_train_and_val_folders_get_their_own_shards(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / "src" / split / "a").mkdir(parents=True)
        write_video(tmp_path / "src" / split / "a" / "v.mp4", 6, "mpeg4")
    main([str(tmp_path / "src"), str(tmp_path / "dst")])
    assert (tmp_path / "dst" / "train" / "index.json").is_file() and (tmp_path / "dst" / "val" / "index.json").is_file()
    val = build_dataset("video_folder", "val", frames=4, size=16, channels=3, root=str(tmp_path / "dst"), seed=0)
    assert isinstance(val, VideoShards) and val.root == str(tmp_path / "dst" / "val")


def test_a_missing_or_foreign_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no shard index"):
        VideoShards(str(tmp_path))
    (tmp_path / "index.json").write_text(json.dumps({"format": "other", "samples": []}))
    with pytest.raises(DataError, match="not a hjepa-video-shards/1 index"):
        VideoShards(str(tmp_path))


def test_videos_cut_off_by_a_truncated_shard_are_skipped(folder: Path, tmp_path: Path) -> None:
    write_shards(str(folder), str(tmp_path / "s"))
    shard = tmp_path / "s" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # the first video survives, the rest are cut off
    packed = VideoShards(str(tmp_path / "s"), frames=4, size=16, max_bad_fraction=1.0)
    first = packed[(0, 0)]["clip"]
    assert all(torch.equal(packed[(i, 0)]["clip"], first) for i in range(len(packed)))  # all read video 0
    assert len(packed.skipped) == len(packed) - 1


def test_workers_read_shards_as_one_process_does(folder: Path, tmp_path: Path) -> None:
    """The parent opens a shard first; two forked workers then open their own (a shared file position would
    mix their reads)."""
    from hjepa_fast.data import StepBatchSampler

    write_shards(str(folder), str(tmp_path / "s"), shard_bytes=10_000)
    packed = VideoShards(str(tmp_path / "s"), frames=4, size=16, max_bad_fraction=0.5)
    packed[(0, 0)]

    def run(workers: int) -> list[torch.Tensor]:
        sampler = StepBatchSampler(len(packed), 3, seed=1, total_steps=6)
        return [b["clip"] for b in torch.utils.data.DataLoader(packed, batch_sampler=sampler, num_workers=workers)]

    assert all(torch.equal(a, b) for a, b in zip(run(0), run(2), strict=True))


def test_reencoding_shortens_the_keyframe_interval_and_keeps_the_frames(tmp_path: Path, make_clip) -> None:
    """A 60-frame H.264 video with one keyframe, re-encoded with gop=8: a keyframe every 8 frames, the same
    frame count and rate, frames close to the source's (lossy), items read through the shards."""
    import av

    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "v.mkv").write_bytes(make_clip("h264_one_keyframe.mkv", 60, gop=250).read_bytes())
    (tmp_path / "src" / "a" / "x.mp4").write_bytes(b"not a video")
    write_shards(str(tmp_path / "src"), str(tmp_path / "s"), gop=8)
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        assert tar.getnames()[::2] == ["000000000.mp4", "000000001.mp4"]  # x.mp4 kept as it was
        data = tar.extractfile("000000000.mp4").read()
    with av.open(io.BytesIO(data)) as video:
        stream = video.streams.video[0]
        keyframes = [packet.is_keyframe for packet in video.demux(stream) if packet.size]
        assert (stream.codec_context.name, stream.average_rate, stream.frames) == ("h264", 25, 60)
    assert [i for i, key in enumerate(keyframes) if key] == list(range(0, 60, 8))
    folder = VideoFolder(str(tmp_path / "src"), frames=4, size=16, max_bad_fraction=0.5)
    packed = VideoShards(str(tmp_path / "s"), frames=4, size=16, max_bad_fraction=0.5)
    for step in range(3):
        a, b = folder[SampleKey(0, step)]["clip"].float(), packed[SampleKey(0, step)]["clip"].float()
        assert (a - b).abs().mean() < 4  # the same frames, through a second lossy encode


def test_hjepa_shard_command(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hjepa_fast.cli import main as hjepa

    assert hjepa(["shard", str(folder), str(tmp_path / "out"), "--shard-mb", "0.01"]) in (0, None)
    assert "written:" in capsys.readouterr().out and len(list((tmp_path / "out").glob("*.tar"))) > 1
    assert hjepa(["shard", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "no video folder" in capsys.readouterr().err
