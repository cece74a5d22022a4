"""Clip decoding on one CPU core: from the start of the file (PyAV's default threads, and one thread) against
seeking to the keyframe before the clip (``hjepa_fast.data.decode``), and the whole VideoFolder item. Videos: 4
H.264 mp4s of 30 s, 30 fps, 320x240 (--quick: 2 of 5 s), written here with libx264's defaults (a keyframe at most
every ``--gop`` frames) from a panning photo with noise; 16 clips of 16 frames (--quick: 4), stride 2, uniform."""
from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import cli, device_info, measure, row_line, write_results
from hjepa_fast.data import SampleKey, VideoFolder
from hjepa_fast.data.clips import clip_frame_numbers
from hjepa_fast.data.decode import Video, import_av

FPS, FRAMES, STRIDE, WIDTH, HEIGHT = 30, 16, 2, 320, 240


def write_videos(folder: Path, count: int, seconds: int, gop: int) -> list[str]:
    """``count`` H.264 mp4s in ``folder/v/`` (one class folder, as VideoFolder reads them)."""
    av = import_av()
    from skimage import data as photos  # bundled CC0 photos

    (folder / "v").mkdir(parents=True)
    rng, texture, paths = np.random.default_rng(0), np.tile(photos.astronaut(), (2, 2, 1)), []  # 1024 x 1024 x 3
    for v in range(count):
        paths.append(str(folder / "v" / f"video{v}.mp4"))
        with av.open(paths[-1], "w") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.codec_context.thread_count, stream.codec_context.gop_size = 1, gop
            for k in range(seconds * FPS):
                y, x = (3 * k + 50 * v) % (1024 - HEIGHT), (2 * k) % (1024 - WIDTH)  # a slow diagonal pan
                image = texture[y : y + HEIGHT, x : x + WIDTH].astype(np.int16)
                image += rng.integers(-6, 7, image.shape, dtype=np.int16)  # sensor noise
                frame = av.VideoFrame.from_ndarray(image.clip(0, 255).astype(np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    return paths


def read(path: str, numbers: list[int], from_start: bool, threads: int | None) -> tuple[dict, int]:
    """One clip's frames as the benchmarked reader gets them (one open of the file), and the frame count."""
    with Video(path, threads=threads) as video:
        return (video.read_from_start if from_start else video.read)(numbers), video.info.num_frames


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--gop", type=int, default=250, help="longest keyframe interval, frames")
    args = parser.parse_args()
    videos, seconds, n_clips = (2, 5, 4) if args.quick else (4, 30, 16)
    torch.set_num_threads(1)
    cpu, shape = torch.device("cpu"), f"{WIDTH}x{HEIGHT} {seconds}s gop {args.gop}"
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_videos(Path(tmp), videos, seconds, args.gop)
        counts, rng = [read(p, [], False, 1)[1] for p in paths], np.random.default_rng(1)
        picks = [int(rng.integers(len(paths))) for _ in range(n_clips)]
        clips = [(paths[v], clip_frame_numbers(counts[v], FRAMES, Fraction(STRIDE), rng)) for v in picks]
        start = float(np.mean([numbers[0] for _, numbers in clips]))
        folder = VideoFolder(tmp, frames=FRAMES, size=224, frame_stride=STRIDE)
        assert folder.paths == paths, "VideoFolder lists the videos in the order they were written"
        keys = [SampleKey(v, 0, slot) for slot, v in enumerate(picks)]
        readers = {"from start, PyAV default threads": lambda: [read(p, n, True, None) for p, n in clips],
                   "from start": lambda: [read(p, n, True, 1) for p, n in clips],
                   "seeking": lambda: [read(p, n, False, 1) for p, n in clips],
                   "VideoFolder item (seek, crop, 224 px)": lambda: [folder[k] for k in keys]}
        rows = [{"path": name, "case": shape, **measure(fn, cpu, reps=3 if args.quick else 5, warmup=1)}
                for name, fn in readers.items()]
    print(f"{videos} videos, {seconds} s at {FPS} fps, {WIDTH}x{HEIGHT}, gop {args.gop}; {n_clips} clips of "
          f"{FRAMES} frames (stride {STRIDE}), mean start frame {start:.0f}; one core")
    for r in rows:
        r["clips_per_s"] = n_clips / (r["ms"] * 1e-3)
        r["speedup"] = r["clips_per_s"] / rows[0]["clips_per_s"]
        print(row_line(r))
    info = device_info(cpu) | {"videos": videos, "seconds": seconds, "size": f"{WIDTH}x{HEIGHT}", "gop": args.gop,
                               "clips": n_clips, "frames": FRAMES, "stride": STRIDE, "mean_start_frame": start}
    print(f"results: {write_results('video_decode', info, rows, args.out)}")


if __name__ == "__main__":
    main()
