"""The runner every benchmark shares: timing, the copy reference, result rows, their printed line and JSON (device
and versions), and the command line (``--out``, ``--quick``, ``--device``). An op benchmark is a list of specs and a
setup that builds each spec's calls (``Case``), handed to ``run_cases``; what it times is data in ``cases.yaml``."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import yaml

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
CASES = yaml.safe_load((Path(__file__).parent / "cases.yaml").read_text())
DETAILS = CASES["run"]["details"]  # row field -> format, for the printed lines and the summary table
MAX_FRACTION = 1.1  # of a copy of the same bytes: above it the byte count or the reference is wrong
L2_BYTES = 50 * 2**20  # an H100's or H200's L2 cache, where the device properties do not say


def device_info(device: torch.device) -> dict:
    cuda, triton = device.type == "cuda", importlib.util.find_spec("triton")
    return {"device": str(device), "torch": torch.__version__, "triton": triton and importlib.import_module(
            "triton").__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
            **({} if cuda else {"threads": torch.get_num_threads()})}


def row_label(row: dict) -> tuple[str, str]:
    """A row's case and path, whichever benchmark wrote it (the training step's: config and batch, variant)."""
    case = f"{row['config']} B{row['batch']}" if "config" in row else row.get("case") or row.get("shape")
    return case, row.get("path") or row.get("variant")


def details(row: dict) -> str:
    """The ``DETAILS`` fields a row has, formatted: the summary table's last column, the end of a printed line."""
    return ", ".join(fmt.format(row[key]) for key, fmt in DETAILS.items() if row.get(key) is not None)


def row_line(row: dict) -> str:
    """The line a benchmark prints for a row as it measures it."""
    case, path = row_label(row)
    return f"{case:<36} {path:<30} {row['ms']:9.3f} ms (IQR {row['ms_q25']:.3f}-{row['ms_q75']:.3f})  {details(row)}"


def failure(exc: BaseException) -> str:
    """An exception in a line that fits a results file."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, reps: int = 20, warmup: int = 1,
                calls: int = 1) -> dict[str, dict]:
    """Wall-clock ms per call of each function: median and IQR over ``reps`` rounds that time the functions in
    turn (a shared machine's load hits them alike), ``calls`` calls a timing."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for fn in [fn for fn in fns.values() for _ in range(warmup)]:
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _, (name, fn) in itertools.product(range(reps), fns.items()):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: {"ms": statistics.median(ts), "ms_q25": statistics.quantiles(ts, n=4)[0],
                   "ms_q75": statistics.quantiles(ts, n=4)[2], "reps": reps} for name, ts in times.items()}


def measure(fn: Callable[[], object], device: torch.device, graph: bool = False, reps: int = 20,
            warmup: int = 3) -> dict:
    """Median and IQR of ``fn``'s time in ms: on CUDA ``do_bench`` (a caller's time) or, ``graph``,
    ``do_bench_cudagraph`` (the device's); on CPU ``interleaved``."""
    if device.type == "cuda":
        from triton.testing import do_bench, do_bench_cudagraph

        quantiles = [0.25, 0.5, 0.75]
        q = do_bench_cudagraph(fn, quantiles=quantiles) if graph else do_bench(fn, warmup=25, rep=100,
                                                                                quantiles=quantiles)
        return {"ms": q[1], "ms_q25": q[0], "ms_q75": q[2]}
    if graph:
        raise ValueError("graph timing needs a CUDA device")
    return interleaved({"": fn}, device, reps, warmup)[""]


def cold_copies(input_bytes: int, device: torch.device, factor: int = 4, most: int = 8) -> int:
    """Copies of a call's inputs (``input_bytes``) to take in turn (``Cycling``) so that the others stream
    ``factor`` L2 caches between two uses of one: each call reads from memory. 1 on CPU; at most ``most``."""
    if device.type != "cuda" or input_bytes <= 0:
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or L2_BYTES
    return 1 if input_bytes >= factor * l2 else min(most, math.ceil(factor * l2 / input_bytes) + 1)


def seeded_copies(make: Callable[[torch.Generator], tuple], input_bytes: int, device: torch.device,
                  seed: int = 0) -> list[tuple]:
    """``make``'s inputs from one seeded generator, in as many copies as a cold timing needs (``cold_copies``)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [make(g) for _ in range(cold_copies(input_bytes, device))]


class Cycling:
    """``fn`` on the next of ``arg_sets`` at each call (a CUDA graph captures the rotation); ``restart()``: the
    next call takes the first set again."""

    def __init__(self, fn: Callable[..., object], arg_sets: list[tuple]):
        if not arg_sets:
            raise ValueError("Cycling needs at least one argument set")
        self.fn, self.arg_sets = fn, arg_sets
        self.restart()

    def restart(self) -> None:
        self._sets = itertools.cycle(self.arg_sets)

    def __call__(self, *extra) -> object:
        return self.fn(*next(self._sets), *extra)


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20) -> float:
    """GB/s of a plain device copy (read + write), the ceiling the kernels are compared with."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / measure(lambda: dst.copy_(src), device)["ms"] / 1e6


def default_setting(settings_fn: Callable, like: Iterable[str]) -> dict:
    """The defaults of ``settings_fn``'s keyword arguments that the launch setting ``like`` names."""
    return {key: inspect.signature(settings_fn).parameters[key].default for key in like}


def launch_settings(settings_fn: Callable, partial: list[dict]) -> list[dict]:
    """Each setting of ``partial`` (``cases.yaml``) in full: every keyword any of them names, in
    ``settings_fn``'s order, the unnamed ones at its defaults (lists as tuples: the settings are cached)."""
    named = {key for setting in partial for key in setting}
    default = default_setting(settings_fn, [key for key in inspect.signature(settings_fn).parameters if key in named])
    return [default | {k: tuple(v) if isinstance(v, list) else v for k, v in s.items()} for s in partial]


def setting_text(setting: dict, default: dict | None = None) -> str:
    """``tile_elements=1024 warps=2``: a launch setting's keywords (those that differ from ``default``)."""
    text = " ".join(f"{key}={'/'.join(map(str, value)) if isinstance(value, tuple) else value}"
                    for key, value in setting.items() if default is None or value != default.get(key))
    return text or "default"


def fraction_of_copy(gbps: float, copy_gbps: float | None) -> float | None:
    """``gbps`` over the copy's GB/s (None without a reference); ValueError above ``MAX_FRACTION``."""
    if copy_gbps is None:
        return None
    if gbps / copy_gbps > MAX_FRACTION:
        raise ValueError(f"{gbps:.1f} GB/s is {gbps / copy_gbps:.0%} of a copy of the same bytes ({copy_gbps:.1f} "
                         f"GB/s), above {MAX_FRACTION:.0%}: the byte count or the reference is wrong")
    return gbps / copy_gbps


@dataclasses.dataclass
class Case:
    """One op at one shape. ``paths``: name -> one call, the baseline first (outputs compared with its,
    speedups over it); with ``inputs`` each path takes the argument sets in turn (``Cycling``). ``nbytes``: row
    field -> bytes a call moves (GB/s on the first; on CUDA fractions of the copy bandwidth, measured on
    ``copy_bytes``). ``reset`` runs before each output comparison."""

    name: str
    paths: dict[str, Callable[..., object]]
    nbytes: dict[str, int] = dataclasses.field(default_factory=dict)
    fields: dict = dataclasses.field(default_factory=dict)
    reset: Callable[[], object] = lambda: None
    copy_bytes: int = 256 * 2**20
    compare: bool = True
    inputs: list[tuple] | None = None

    def __post_init__(self):
        if self.inputs is not None:
            self.paths = {name: Cycling(fn, self.inputs) for name, fn in self.paths.items()}


def _errors_against_baseline(case: Case, errors: list[str]) -> dict[str, float | None]:
    """Each path that runs -> the largest difference of its outputs from the baseline's (None where not
    compared); a path that fails goes to ``errors``."""
    first, want, err = next(iter(case.paths)), [], {}
    for name, fn in case.paths.items():
        case.reset()
        getattr(fn, "restart", lambda: None)()
        try:
            out = fn()
        except Exception as exc:
            errors.append(f"{case.name} {name}: {failure(exc)}")
            continue
        out = [t.detach() for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        want = out if name == first else want
        diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(out, want)]
        err[name] = max(diffs) if diffs and case.compare else None
    return err


def time_case(case: Case, device: torch.device, copy_gbps: float | None, errors: list[str], graph_only: bool = False,
              again: int = 0, wall: bool = False, calls: int = 1, reps: int = 20) -> list[dict]:
    """Rows of every path of ``case``. CPU, or ``wall``: ``interleaved``. CUDA: as a caller sees it and from a
    graph (``<path> graph``, ``gap_ms`` the difference), or the graph alone (``graph_only``). ``again``: the
    baseline and the ``again`` fastest others timed again, in reverse order (``round`` 2). Failures go to
    ``errors``."""
    err, first, base, rows = _errors_against_baseline(case, errors), next(iter(case.paths)), {}, []

    def timed(name: str, graph: bool) -> dict | None:
        try:
            return measure(case.paths[name], device, graph, reps)
        except Exception as exc:
            errors.append(f"{case.name} {name}{' graph' if graph else ''}: {failure(exc)}")

    def add(name: str, graph: bool, t: dict | None, **extra) -> None:
        if t is None:
            return
        base.setdefault(graph, t["ms"] if name == first else None)
        label = f"{name} graph" if graph and not graph_only else name
        speedup = base[graph] / t["ms"] if base[graph] else None
        row = {"case": case.name, "path": label, **t, "timing": "graph" if graph else "caller", **case.fields}
        for field, nbytes in case.nbytes.items():
            row.setdefault("gbps", nbytes / t["ms"] / 1e6)
            try:
                row[field] = fraction_of_copy(nbytes / t["ms"] / 1e6, copy_gbps)
            except ValueError as exc:
                row[field], row["error"] = None, str(exc)
        row |= {"speedup_vs_eager" if first == "eager" else "speedup": speedup, "max_abs_err": err[name], **extra}
        rows.append(row)
        print(row_line(row), flush=True)

    if wall or device.type != "cuda":
        graphs = [False]
        for name, t in interleaved({n: case.paths[n] for n in err}, device, reps, calls=calls).items():
            add(name, False, t)
    else:
        graphs = [True] if graph_only else [False, True]
        for graph, name in itertools.product(graphs, err):
            add(name, graph, timed(name, graph))
    for r, twin in itertools.product(rows, rows):  # the caller's time beyond the device's
        if twin["path"] == f"{r['path']} graph":
            r["gap_ms"] = twin["gap_ms"] = r["ms"] - twin["ms"]
    fastest = sorted((r for r in rows if r["path"] != first), key=lambda r: r["ms"])[:again]
    for name in [r["path"] for r in reversed([r for r in rows if r["path"] == first][:again and 1] + fastest)]:
        add(name, graphs[-1], timed(name, graphs[-1]), round=2)
    return rows


def run_cases(name: str, args: argparse.Namespace, specs: Callable[[torch.device, bool], Iterable],
              setup: Callable[..., Iterable[Case]], cuda_only: bool = False, **timing) -> list[dict]:
    """Every case ``setup(spec, device, quick)`` yields for each of ``specs(device, quick)``, timed on one CPU
    thread (``time_case``), the results written after each spec (a time limit keeps what was measured)."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    info, rows, copies = device_info(device) | {"errors": [], "skipped": []}, [], {}
    if cuda_only and device.type != "cuda":
        info["skipped"].append("needs CUDA")
        print(f"{name} times the Triton kernels: it needs CUDA; skipped")
    for spec in [] if info["skipped"] else specs(device, args.quick):
        try:
            for case in setup(spec, device, args.quick):
                if device.type == "cuda" and case.nbytes and case.copy_bytes not in copies:
                    copies[case.copy_bytes] = info["copy_gbps"] = copy_bandwidth(device, case.copy_bytes)
                torch._dynamo.reset()  # one compilation per case: Dynamo's recompile limit is 8
                rows += time_case(case, device, copies.get(case.copy_bytes), info["errors"], **timing)
        except Exception as exc:  # out of memory at the largest shape, say: the other rows still count
            info["errors"].append(f"{spec}: {failure(exc)}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_results(name, info, rows, args.out)
    write_results(name, info, rows, args.out)
    for e in info["errors"]:
        print("error:", e)
    return rows


def write_results(name: str, info: dict, rows: list[dict], out: Path) -> Path:
    """``out/<name>.json``: ``info`` (device, versions, notes) and the rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, **info, "rows": rows}, indent=2))
    return path


def cli(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --out, --quick, --device."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser
