"""Frame-exact clip decoding with PyAV: seek to the keyframe before the clip, decode only up to its last frame.

A video's frames are numbered 0 .. n-1 in presentation order; frame k is the one shown at
``start + k / fps``, where ``fps`` is the stream's average rate (constant-frame-rate videos: every camera and
encoder setting we train on). The seeking reader maps each decoded frame's timestamp back to its number, so
it returns exactly the frames a decode from the start would have returned at those positions (tested against
one on short- and long-GOP H.264 and MPEG-4), at the cost of at most one GOP of extra frames instead of every
frame before the clip.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from fractions import Fraction
from types import ModuleType
from typing import Any

import numpy as np

from hjepa_fast.errors import DataError


class VideoDecodeError(DataError, RuntimeError):
    """A video file PyAV cannot open or decode, or one without a video stream."""


def import_av() -> ModuleType:
    """PyAV, imported on first use so that `hjepa_fast.data` imports without it."""
    try:
        import av
    except ImportError as err:
        raise ImportError("video decoding needs PyAV: `pip install av` (a dependency of hjepa_fast)") from err
    return av


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What clip sampling needs to know about a video stream.

    ``num_frames``: from the header, else counted by demuxing (no decoding); ``fps``: average frame rate;
    ``start`` and ``time_base``: the stream's first timestamp and its unit (seconds per tick)."""

    num_frames: int
    fps: Fraction
    start: int
    time_base: Fraction

    def pts(self, number: int) -> int:
        """Timestamp (in ``time_base`` ticks) at which frame ``number`` is shown."""
        return self.start + round(Fraction(number) / (self.fps * self.time_base))

    @functools.cached_property
    def _frames_per_tick(self) -> tuple[int, int]:
        """``time_base * fps`` as (numerator, denominator): ``number`` runs per packet, in integers."""
        ratio = self.time_base * self.fps
        return ratio.numerator, ratio.denominator

    def number(self, pts: int) -> int:
        """Frame number of a frame shown at timestamp ``pts`` (nearest frame of the constant-rate grid)."""
        num, den = self._frames_per_tick
        return (2 * (pts - self.start) * num + den) // (2 * den)


def open_video(path: str) -> Any:
    """An open PyAV container of ``path`` with at least one video stream; VideoDecodeError names the file."""
    av = import_av()
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as err:  # OSError: PyAV < 9 and some I/O errors
        raise VideoDecodeError(f"cannot open video {path!r}: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"cannot decode video {path!r}: it has no video stream")
    return container


def probe(path: str) -> VideoInfo:
    """The ``VideoInfo`` of ``path``'s first video stream."""
    av = import_av()
    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or stream.time_base is None:
            raise VideoDecodeError(f"cannot decode video {path!r}: its stream has no frame rate or time base")
        num_frames = stream.frames
        if num_frames <= 0:  # no count in the header (mkv, webm): count packets, which is I/O only
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as err:
                raise VideoDecodeError(f"cannot decode video {path!r}: {err}") from err
        if num_frames <= 0:
            raise VideoDecodeError(f"cannot decode video {path!r}: no frames")
        return VideoInfo(num_frames, Fraction(fps), stream.start_time or 0, Fraction(stream.time_base))


def _to_array(frame: Any, pixel_format: str, threads: int | None) -> np.ndarray:
    """uint8 [H, W, C] of a decoded frame (C = 3 for rgb24, 1 for gray), converted by swscale on ``threads``
    threads (PyAV's default, None, costs 1.4 ms a 320x240 frame here against 0.12 ms on one thread)."""
    return frame.to_ndarray(format=pixel_format, threads=threads).reshape(frame.height, frame.width, -1)


def read_frames(
    path: str, numbers: Sequence[int], info: VideoInfo, pixel_format: str = "rgb24", threads: int | None = 1
) -> dict[int, np.ndarray]:
    """Frames ``{number: uint8 [H, W, C]}`` of ``numbers`` (any order, repeats allowed), by seeking.

    Seeks to the keyframe at or before the first wanted frame and decodes until the last one. Numbers past
    the end of the video are absent from the result. ``threads``: decoder and conversion threads (1 = one
    core per worker, as a DataLoader worker should use; None = PyAV's defaults). Falls back to a decode from
    the start where the container's seek lands after the wanted frame or frames carry no timestamp."""
    av = import_av()
    wanted = sorted(set(numbers))
    if not wanted:
        return {}
    out: dict[int, np.ndarray] = {}
    with open_video(path) as container:
        stream = container.streams.video[0]
        if threads is not None:
            stream.codec_context.thread_count = threads
        try:
            for exact_count in (False, True):  # True: the fallback, from the start
                out.clear()
                seek_to = info.start if exact_count else info.pts(wanted[0])
                container.seek(seek_to, backward=True, any_frame=False, stream=stream)
                if _collect(container, stream, wanted, info, pixel_format, threads, out, exact_count):
                    break
        except av.FFmpegError as err:
            raise VideoDecodeError(f"cannot decode video {path!r}: {err}") from err
    return out


def _collect(
    container: Any, stream: Any, wanted: list[int], info: VideoInfo, pixel_format: str, threads: int | None,
    out: dict[int, np.ndarray], exact_count: bool,
) -> bool:
    """Decode from the container's position into ``out``; False where the position was past ``wanted[0]``.

    ``exact_count``: number frames by counting from the start (the fallback) instead of by timestamp, and
    decode every frame; else the decoder drops the frames no other frame refers to (B-frames, mostly)
    unless they are wanted: what is dropped is never shown, nor needed to decode what is shown."""
    targets = set(wanted)
    for count, frame in enumerate(_decoded(container, stream, info, None if exact_count else targets)):
        if exact_count:
            number = count
        elif frame.pts is None:
            return False
        else:
            number = info.number(frame.pts)
            if count == 0 and number > wanted[0]:
                return False  # the seek overshot: the keyframe index is missing or coarse
        if number in targets:
            out[number] = _to_array(frame, pixel_format, threads)
        if number >= wanted[-1]:
            break
    return True


def _decoded(container: Any, stream: Any, info: VideoInfo, keep: set[int] | None) -> Iterator[Any]:
    """Frames decoded from the container's position. With ``keep``, a packet whose frame number is not in
    it is decoded with ``skip_frame=NONREF``: the decoder drops it unless another frame refers to it."""
    context = stream.codec_context
    for packet in container.demux(stream):
        if keep is not None:
            needed = packet.pts is None or info.number(packet.pts) in keep
            context.skip_frame = "DEFAULT" if needed else "NONREF"
        yield from packet.decode()


def read_frames_from_start(
    path: str, numbers: Sequence[int], pixel_format: str = "rgb24", threads: int | None = 1
) -> dict[int, np.ndarray]:
    """The reference reader: frames ``{number: uint8 [H, W, C]}`` by decoding from the first frame, counting.

    Exact for every container and codec; its cost grows with the position of the clip in the video (it is
    what the seeking reader is tested and benchmarked against; with ``threads=None`` it is the reader
    VideoFolder used before it seeked)."""
    av = import_av()
    wanted = set(numbers)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    with open_video(path) as container:
        stream = container.streams.video[0]
        if threads is not None:
            stream.codec_context.thread_count = threads
        try:
            for number, frame in enumerate(container.decode(stream)):
                if number in wanted:
                    out[number] = _to_array(frame, pixel_format, threads)
                if number >= last:
                    break
        except av.FFmpegError as err:
            raise VideoDecodeError(f"cannot decode video {path!r}: {err}") from err
    return out
