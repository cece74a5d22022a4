"""The seeking reader returns exactly the frames of a decode from the start, on short- and long-GOP videos."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from hjepa_fast.data.decode import Video, VideoDecodeError, VideoInfo

VIDEOS = {  # name: (frames, write_clip options)
    "h264_gop4.mp4": (60, {"gop": 4}),
    "h264_gop250.mp4": (75, {"gop": 250}),  # one keyframe: every seek lands on frame 0
    "h264_gop12_fps30.mkv": (70, {"gop": 12, "fps": 30}),
    "mpeg4_gop10.mp4": (50, {"codec": "mpeg4", "gop": 10}),
    "ffv1.mkv": (40, {"codec": "ffv1", "gop": 1}),  # no frame count in the header
    "h264_gop8.avi": (40, {"gop": 8}),  # AVI: decode-order timestamps, B-frames: read from the start
    "mpeg4_gop10.mov": (40, {"codec": "mpeg4", "gop": 10}),
}


@pytest.mark.parametrize("name", list(VIDEOS))
def test_seeking_reader_equals_full_decode(make_clip, full_decode, name: str) -> None:
    frames, options = VIDEOS[name]
    path = make_clip(name, frames, **options)
    reference = full_decode(path)
    with Video(str(path)) as video:
        assert video.info.num_frames == len(reference) == frames
        assert video.counted == name.endswith(".mkv")  # Matroska keeps no frame count in its header
    rng = np.random.default_rng(0)
    picks = [[0], [frames - 1], list(range(frames - 5, frames)), [7, 3, 7, 30], *([k] for k in range(1, frames, 4))]
    picks += [sorted(rng.choice(frames, size=4, replace=False).tolist()) for _ in range(4)]
    for numbers in picks:
        with Video(str(path)) as video:
            assert video.timestamped == (not name.endswith(".avi"))
            got = video.read(numbers)
        assert sorted(got) == sorted(set(numbers))
        for n in numbers:
            assert np.array_equal(got[n], reference[n]), f"{name}: frame {n} differs"
    with Video(str(path), num_frames=frames) as video:
        assert not video.counted
        from_start = video.read_from_start([2, 9])
    assert all(np.array_equal(from_start[n], reference[n]) for n in (2, 9)) and len(from_start) == 2


def test_frames_past_the_end_are_absent_and_gray_has_one_channel(make_clip, full_decode) -> None:
    frames, options = VIDEOS["h264_gop4.mp4"]
    path = str(make_clip("h264_gop4.mp4", frames, **options))
    with Video(path) as video:
        assert sorted(video.read([58, 59, 60, 75])) == [58, 59]
        gray = video.read([10], pixel_format="gray")[10]
    assert gray.shape == (48, 64, 1) and gray.dtype == np.uint8
    assert np.array_equal(gray, full_decode(path, "gray")[10])


def test_unreadable_files_raise_naming_the_file(tmp_path, make_clip) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(make_clip("h264_gop4.mp4", 60, gop=4).read_bytes()[:3000])
    for path in (empty, noise, truncated):
        with pytest.raises(VideoDecodeError, match=path.name):
            Video(str(path))


@pytest.mark.parametrize("fps, time_base, start", [(Fraction(30000, 1001), Fraction(1, 90000), 0),
                                                   (Fraction(25), Fraction(1, 12800), 1024),
                                                   (Fraction(24), Fraction(1, 1000), -42)])
def test_frame_numbers_and_timestamps_round_trip(fps: Fraction, time_base: Fraction, start: int) -> None:
    """NTSC's 29.97 fps has no whole number of ticks per frame: each frame still maps back to its number,
    and a timestamp off the grid by under half a frame maps to the nearest frame."""
    info = VideoInfo(5000, fps, start, time_base)
    assert [info.number(info.pts(n)) for n in range(5000)] == list(range(5000))
    almost_half = int(0.45 / (fps * time_base))
    assert info.number(info.pts(100) + almost_half) == 100 and info.number(info.pts(100) - almost_half) == 100
