"""Shared benchmark harness: timing (median and spread), copy bandwidth of the same device in the same
run, results as JSON (with the device and versions) and a bar plot.

Every microbenchmark in this folder is ``python -m benchmarks.bench_<op> [--out DIR] [--quick]``."""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def measure(fn: Callable[[], object], device: torch.device, reps: int = 20, warmup: int = 3,
            graph: bool = False) -> dict:
    """Median and interquartile range of ``fn``'s run time in milliseconds. On CUDA this is
    ``triton.testing.do_bench`` (events, cache flush between calls): the time a caller sees, the host's
    launch work included wherever the device waits for it. ``graph=True`` (CUDA only) is
    ``triton.testing.do_bench_cudagraph``: ``fn`` captured in a CUDA graph and replayed, the device's time
    alone (no cache flush: a working set near the L2 cache's size needs ``Cycling`` over ``cold_copies`` of
    its inputs). On CPU a perf_counter loop."""
    if device.type == "cuda":
        from triton.testing import do_bench, do_bench_cudagraph

        quantiles = [0.25, 0.5, 0.75]
        q = do_bench_cudagraph(fn, quantiles=quantiles) if graph else do_bench(fn, warmup=25, rep=100,
                                                                                quantiles=quantiles)
        return {"ms": q[1], "ms_q25": q[0], "ms_q75": q[2]}
    if graph:
        raise ValueError("graph timing needs a CUDA device")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=4)
    return {"ms": statistics.median(times), "ms_q25": q[0], "ms_q75": q[2]}


# H100 / H200: the L2 size ``cold_copies`` assumes where the device properties do not say
_DEFAULT_L2_BYTES = 50 * 2**20


def cold_copies(input_bytes: int, device: torch.device, factor: int = 4, most: int = 8) -> int:
    """How many copies of a call's inputs (``input_bytes`` read from them per call) a timing cycles through
    (``Cycling``) so that between two uses of one copy the others stream at least ``factor`` times the
    device's L2 cache through it: each call then reads its inputs from memory, as the caller-timed rows do
    (``do_bench`` flushes the L2 between calls) and as the copy they are compared with does. 1 where one
    call's inputs alone are that large, and on CPU; at most ``most``."""
    if device.type != "cuda" or input_bytes <= 0:
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or _DEFAULT_L2_BYTES
    if input_bytes >= factor * l2:
        return 1
    return min(most, math.ceil(factor * l2 / input_bytes) + 1)


class Cycling:
    """``fn`` on the next of ``arg_sets`` at each call. A CUDA graph of unrolled calls (``do_bench_cudagraph``)
    captures the rotation: replayed, consecutive calls read different memory, so no call finds its inputs
    in the L2 cache where the previous one left them (working sets near the L2's size: the loss at D 96).
    ``restart()``: the next call takes the first set again (outputs compared on the same inputs). Arguments
    of a call follow the set's (a sweep's launch setting)."""

    def __init__(self, fn: Callable[..., object], arg_sets: list[tuple]):
        if not arg_sets:
            raise ValueError("Cycling needs at least one argument set")
        self.fn, self.arg_sets = fn, arg_sets
        self.restart()

    def restart(self) -> None:
        self._sets = itertools.cycle(self.arg_sets)

    def __call__(self, *extra) -> object:
        return self.fn(*next(self._sets), *extra)


def timings(device: torch.device) -> tuple[bool, ...]:
    """The ``graph`` values of ``measure`` a benchmark runs on ``device``: as a caller sees it, and on CUDA
    also from a CUDA graph (device time alone)."""
    return (False, True) if device.type == "cuda" else (False,)


def time_against_eager(paths: dict[str, object], time_one: Callable[[object, bool], dict], device: torch.device,
                       errors: list[str], where: str) -> Iterator[tuple[str, str, dict, float | None]]:
    """Each timing of ``device`` (``timings``), each path in turn: ``time_one(fn, graph=...)``, yielded as (name,
    path label: ``<name>`` or ``<name> graph``, the timing, speedup over the ``eager`` path under the same
    timing or None). A path that raises goes to ``errors`` (after ``where``) and is left out: one failing
    path must not hide the others."""
    for graph in timings(device):
        eager_ms = None
        for name, fn in paths.items():
            path = f"{name} graph" if graph else name
            try:
                t = time_one(fn, graph=graph)
            except Exception as exc:
                errors.append(f"{where} {path}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            eager_ms = t["ms"] if name == "eager" else eager_ms
            yield name, path, t, None if eager_ms is None else eager_ms / t["ms"]


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20) -> float:
    """GB/s of a plain device copy (read + write), the ceiling the kernels are compared with."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src), device)["ms"]
    return 2 * nbytes / (ms * 1e-3) / 1e9


def write_results(name: str, info: dict, rows: list[dict], out: Path, label: str = "path",
                  group: str = "shape") -> tuple[Path, Path]:
    """``out/<name>.json`` (info + rows) and ``out/<name>.png`` (bars: time per ``group``, one bar per
    ``label``)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps({"benchmark": name, **info, "rows": rows}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(str(r[group]) for r in rows))
    labels = list(dict.fromkeys(str(r[label]) for r in rows))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6, len(groups) * 1.2), 4))
    for i, lab in enumerate(labels):
        xs, ys = [], []
        for j, g in enumerate(groups):
            match = [r for r in rows if str(r[group]) == g and str(r[label]) == lab]
            if match:
                xs.append(j + i * width)
                ys.append(match[0]["ms"])
        ax.bar(xs, ys, width, label=lab)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(groups))], groups, rotation=30,
                  ha="right", fontsize=7)
    ax.set_ylabel("ms (median)")
    ax.set_title(f"{name} on {info.get('name', info['device'])}")
    if rows:
        ax.legend(fontsize=7)
    fig.tight_layout()
    png_path = out / f"{name}.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path


def parser(description: str) -> argparse.ArgumentParser:
    """The options every microbenchmark takes: --out, --quick, --device."""
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    cli.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    cli.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return cli


def parse_args(description: str) -> argparse.Namespace:
    return parser(description).parse_args()
