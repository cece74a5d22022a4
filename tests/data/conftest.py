"""Fixtures for the data tests: small real videos written with PyAV (H.264 with a short or long GOP,
MPEG-4, FFV1 in mkv), each frame different from its neighbours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")


def write_clip(path: Path, num_frames: int, codec: str = "libx264", gop: int = 12, fps: int = 25,
               width: int = 64, height: int = 48) -> Path:
    """A video whose frame k has a background level of 3k (mod 256) and a bright 8x8 square moving right
    by 2 px a frame: any two frames within 30 positions differ in every pixel row of the square."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"bf": "2", "keyint_min": str(min(gop, 4))}  # B-frames: decode order != shown order
        for k in range(num_frames):
            image = np.full((height, width, 3), (3 * k) % 256, dtype=np.uint8)
            x = (2 * k) % (width - 8)
            image[8:16, x : x + 8] = 255 - image[0, 0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _full_decode(path: Path, pixel_format: str = "rgb24") -> list[np.ndarray]:
    """Every frame of `path` in order, uint8 [H, W, C], by PyAV's plain decode from the first frame."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format=pixel_format).reshape(f.height, f.width, -1) for f in container.decode(video=0)]


@pytest.fixture(scope="session")
def full_decode() -> Callable[..., list[np.ndarray]]:
    """`full_decode(path, pixel_format="rgb24")`: the exact reference, every frame in order."""
    return _full_decode


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`make_clip(name, num_frames, **write_clip options)` -> path of a video written once per session."""
    base = tmp_path_factory.mktemp("clips")
    written: dict[str, Path] = {}

    def make(name: str, num_frames: int, **options) -> Path:
        if name not in written:
            written[name] = write_clip(base / name, num_frames, **options)
        return written[name]

    return make
