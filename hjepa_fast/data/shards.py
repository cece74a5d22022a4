"""Video shards: a video folder packed into tar files in WebDataset's layout, with an index for random access.

``DST`` holds ``shard-000000.tar``, ``shard-000001.tar``, ... and ``index.json``. Each video is two tar
members: ``{key}.{ext}`` (the file's bytes, or with ``--gop`` the video re-encoded to H.264 mp4 with short
keyframe intervals) and ``{key}.json`` (``{"path": its path under SRC}``),
so WebDataset tools stream the shards as they are. The index lists the shards and, per video in SRC's sorted
order, ``[shard, offset, size, path]``: an uncompressed tar stores a member's bytes contiguously, so a video
is one range read of its shard, from a local folder or any fsspec URL (``s3://``, ``gs://``, ``https://``).
That keeps the data set map-style (WebDataset's ``wids`` reads indexed shards the same way): clips,
resume, per-rank rows of the global batch and bad-file handling are exactly VideoFolder's, and a
``VideoShards`` item equals the ``VideoFolder`` item of the same key (tested). A folder with ``train/``
and ``val/`` gets ``DST/train`` and ``DST/val``.

    python -m hjepa_fast.data.shards SRC DST [--shard-mb 1024] [--gop 30]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import posixpath
import tarfile
from typing import Any, BinaryIO

from hjepa_fast.data.decode import Video, VideoDecodeError, import_av
from hjepa_fast.data.skips import log
from hjepa_fast.data.video_folder import VideoFolder, list_videos
from hjepa_fast.errors import DataError

INDEX = "index.json"
FORMAT = "hjepa-video-shards/1"


def write_shards(src: str, dst: str, shard_bytes: int = 1 << 30, gop: int | None = None) -> list[str]:
    """Pack the videos under ``src`` into shards of about ``shard_bytes`` under ``dst`` (``src/train`` and
    ``src/val`` each into their own, where both exist). ``gop``: re-encode every video to H.264 mp4 with a
    keyframe at most every ``gop`` frames (``reencode``), which is what makes seeking pay on long-GOP
    sources; None stores the files as they are. Returns the index files written."""
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    if gop is not None and gop < 1:
        raise ValueError(f"gop must be >= 1 or None, got {gop}")
    splits = ["train", "val"] if all(os.path.isdir(os.path.join(src, s)) for s in ("train", "val")) else [""]
    return [_write(os.path.join(src, s), os.path.join(dst, s), shard_bytes, gop) for s in splits]


def reencode(path: str, gop: int) -> bytes:
    """``path``'s video stream as H.264 in mp4 (libx264's defaults otherwise: B-frames, CRF 23), same rate,
    frames and size (rounded down to even sides, as yuv420p needs), with a keyframe at most every ``gop``
    frames; sound and other streams are dropped. VideoDecodeError names a file that does not decode."""
    av = import_av()
    out = io.BytesIO()
    with Video(path) as source, av.open(out, "w", format="mp4") as target:
        decoder = source.stream.codec_context
        stream = target.add_stream("libx264", rate=source.info.fps)
        stream.width, stream.height = decoder.width // 2 * 2, decoder.height // 2 * 2
        stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", gop
        for number, frame in enumerate(source.frames()):
            frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            frame.pts, frame.time_base = number, 1 / source.info.fps
            target.mux(stream.encode(frame))
        target.mux(stream.encode())
    return out.getvalue()


def _write(src: str, dst: str, shard_bytes: int, gop: int | None) -> str:
    """The shards and index of one folder (see ``write_shards``); returns the index's path."""
    os.makedirs(dst, exist_ok=True)
    names: list[str] = []
    samples: list[list[Any]] = []
    tar: tarfile.TarFile | None = None
    for number, path in enumerate(list_videos(src)):
        if tar is None or tar.offset >= shard_bytes:
            if tar is not None:
                tar.close()
            names.append(f"shard-{len(names):06d}.tar")
            tar = tarfile.open(os.path.join(dst, names[-1]), "w", format=tarfile.GNU_FORMAT)
        key, ext = f"{number:09d}", os.path.splitext(path)[1].lower()
        rel = os.path.relpath(path, src).replace(os.sep, "/")
        data = None  # the file's own bytes
        if gop is not None:
            try:
                data = reencode(path, gop)
            except VideoDecodeError as err:  # stored as it is: the reader skips it and reports it
                log.warning("stored without re-encoding: %s", err)
        if data is None:
            tar.add(path, arcname=key + ext)
        else:
            member = tarfile.TarInfo(key + ".mp4")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        size = tar.members[-1].size
        # tar.offset is now past the member's data, padded to whole 512-byte blocks: its data starts there
        samples.append([len(names) - 1, tar.offset - -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, size, rel])
        meta = json.dumps({"path": rel}).encode()
        info = tarfile.TarInfo(key + ".json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    assert tar is not None  # list_videos refuses a folder without videos
    tar.close()
    index_path = os.path.join(dst, INDEX)
    with open(index_path + ".tmp", "w") as f:
        json.dump({"format": FORMAT, "shards": names, "samples": samples}, f)
    os.replace(index_path + ".tmp", index_path)
    return index_path


def _fs(root: str) -> tuple[Any, str]:
    """The fsspec file system of ``root`` (a local path or a URL) and the path on it."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as err:
        raise ImportError("video shards are read through fsspec: `pip install fsspec`") from err
    return url_to_fs(root)


def has_shards(root: str) -> bool:
    """Whether ``root`` (a folder or URL) holds a shard index."""
    fs, path = _fs(root)
    return fs.exists(posixpath.join(path, INDEX))


class VideoShards(VideoFolder):
    """VideoFolder over the shards ``write_shards`` wrote to ``root`` (a folder or fsspec URL).

    Same arguments and items as VideoFolder; the label is the parent folder of the video's path in SRC, and
    ``split`` picks the same files as VideoFolder would. Each process opens each shard once, on first use
    (DataLoader workers open their own)."""

    def _list(self, root: str) -> list[str]:
        fs, path = _fs(root)
        try:
            with fs.open(posixpath.join(path, INDEX), "r") as f:
                index = json.load(f)
        except FileNotFoundError:
            raise DataError(f"no shard index {INDEX} under {root!r} (write one with python -m "
                            "hjepa_fast.data.shards SRC DST)") from None
        if index.get("format") != FORMAT or not index.get("samples"):
            raise DataError(f"{posixpath.join(root, INDEX)} is not a {FORMAT} index with samples")
        self._shards = [posixpath.join(path, name) for name in index["shards"]]
        self._spans = [(shard, offset, size) for shard, offset, size, _ in index["samples"]]
        self._handles: dict[int, BinaryIO] = {}
        self._pid = os.getpid()
        return [posixpath.join(root, rel) for *_, rel in index["samples"]]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}  # open files stay with their process
        return state

    def _video(self, index: int) -> Video:
        shard, offset, size = self._spans[index]
        if self._pid != os.getpid():  # a forked worker: the parent's file positions are not its own
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            fs, _ = _fs(self.root)
            self._handles[shard] = fs.open(self._shards[shard], "rb")
        handle = self._handles[shard]
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise VideoDecodeError(f"cannot decode video {self.paths[index]!r}: shard {self._shards[shard]} holds "
                                   f"{len(data)} of its {size} bytes from offset {offset} (truncated)")
        return Video(io.BytesIO(data), num_frames=self._counts.get(index), name=self.paths[index])


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("src", help="a video folder (with train/ and val/, or split by file when read)")
    cli.add_argument("dst", help="the folder to write shards and index.json to")
    cli.add_argument("--shard-mb", type=float, default=1024, help="start a new shard past this size")
    cli.add_argument("--gop", type=int, help="re-encode to H.264 with a keyframe at most every GOP frames")
    args = cli.parse_args(argv)
    for index in write_shards(args.src, args.dst, int(args.shard_mb * 2**20), args.gop):
        print(f"written: {index}")


if __name__ == "__main__":
    main()
