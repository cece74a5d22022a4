"""Tiny real videos for tests, written with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

LEVEL0, LEVEL_STEP = 10, 12  # frame k has background brightness LEVEL0 + k * LEVEL_STEP


def write_video(path: Path, num_frames: int, codec: str) -> None:
    """A 48x32 (W x H) video whose frame k shows a sklearn digit on a background that encodes k."""
    digit = torch.from_numpy(load_digits().images[0]).float()[None, None] * (255 / 16)
    sprite = F.interpolate(digit, size=(16, 16), mode="bilinear").round().byte()[0, 0].numpy()
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for k in range(num_frames):
            image = np.full((32, 48, 3), LEVEL0 + k * LEVEL_STEP, dtype=np.uint8)
            image[8:24, 4:20] = np.maximum(image[8:24, 4:20], sprite[:, :, None])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
