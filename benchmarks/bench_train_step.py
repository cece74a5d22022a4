"""The training step (forward under bf16 autocast on CUDA, backward, AdamW, the EMA of every target encoder) on one
fixed synthetic batch: steps/s, clips/s, tokens/s, memory and (CUDA) MFU per speed switch (``variants``), each
against the baseline in the same run; ViT-B on CUDA only, at the largest micro-batch from 64 that fits.
``--profile``: one warm step of the baseline and ``fast`` under ``torch.profiler``, summed by category.
``--scaling``: the baseline's step against frames, levels, resolution and batch (``cases.yaml``), log-log slopes."""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.harness import CASES, cli, device_info, failure, interleaved, row_line, write_results
from hjepa_fast.config import Config, level_time_steps, load_config
from hjepa_fast.flops import StepFlops, mask_token_counts, peak_bf16_flops, step_flops
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.masks import LevelMasks
from hjepa_fast.model.attention import resolve_backend
from hjepa_fast.train.builders import build_mask_sampler, build_model, build_optimizer
from hjepa_fast.train.compile import apply_compile
from hjepa_fast.train.ema import TargetEMA
from hjepa_fast.train.parallelize import apply_activation_checkpointing

CONFIGS, BASELINE, FAST = (CASES["train_step"][key] for key in ("configs", "baseline", "fast"))
SCALING_BATCH = 8  # the base of the --scaling sweeps


@dataclasses.dataclass
class Session:
    """What one run collects (``<name>.json``; with ``--profile`` also ``train_step_profile.md``), saved after each
    measurement so that a run stopped at its time limit keeps what it measured, and its ``--deadline``."""

    name: str
    args: argparse.Namespace
    device: torch.device
    info: dict
    rows: list[dict] = dataclasses.field(default_factory=list)
    profiles: dict[str, dict] | None = None  # "<config> <variant> B<batch>" -> profile_step's summary
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def out_of_time(self) -> bool:
        return self.args.deadline is not None and time.perf_counter() - self.started > self.args.deadline

    def save(self) -> Path:
        path = write_results(self.name, self.info | ({"profiles": self.profiles} if self.profiles else {}), self.rows,
                             self.args.out)
        if self.profiles:
            (self.args.out / "train_step_profile.md").write_text(
                f"{self.info['name']}, torch {torch.__version__}\n\n"
                + "\n".join(format_profile(key, summary) for key, summary in self.profiles.items()))
        return path


class Variant(NamedTuple):
    name: str
    overrides: list[str]
    compile: bool = False  # torch.compile of the whole model
    batch_factor: int = 1  # micro-batch = the baseline's x this


def variants(device: torch.device, quick: bool, levels: int) -> tuple[list[Variant], list[str]]:
    """The baseline (``BASELINE``), then each switch of ``cases.yaml``; and a note for each variant this device
    skips."""
    expand = {"fast": FAST, "checkpointing": [f"train.activation_checkpointing=[{','.join(['true'] * levels)}]"]}
    out, skipped, switches = [Variant("baseline", [])], [], CASES["train_step"]["variants"]
    if device.type == "cuda" or not quick:
        switches = switches + CASES["train_step"]["compiled_variants"]
    else:
        skipped.append("compiled variants: left out of --quick on CPU (compiling the tiny model takes minutes there)")
    for name, overrides, *options in switches:
        if name.startswith("attention="):
            try:
                if device.type != "cuda":
                    raise ImportError("CUDA only (on CPU every backend runs SDPA)")
                resolve_backend(name.removeprefix("attention="))
            except ImportError as e:
                skipped.append(f"{name}: {e}")
                continue
        out.append(Variant(name, [o for key in overrides for o in expand.get(key, [key])], **(options or [{}])[0]))
    return out, skipped


def _proc_status_mb(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def step_memory(step: Callable[[], None], device: torch.device) -> dict:
    """``step_mem_mb``: one more step's peak over what was allocated before it (the CUDA allocator's; on CPU the
    resident set's, ``VmHWM - VmRSS`` after resetting the peak); on CUDA ``peak_mem_mb``, the allocator's peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        peak = torch.cuda.max_memory_allocated(device)
        return {"step_mem_mb": (peak - before) / 2**20, "peak_mem_mb": peak / 2**20}
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the peak starts from live memory
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        before = _proc_status_mb("VmRSS")
        step()
        return {"step_mem_mb": _proc_status_mb("VmHWM") - before}
    except OSError:
        return {}


class Prepared(NamedTuple):
    """A built step after two untimed runs: ``first_s`` the first (compilation included), ``estimate_s`` the second."""

    cfg: Config
    step: Callable[[], None]
    flops: StepFlops
    first_s: float
    estimate_s: float


def prepare(cfg: Config, device: torch.device, compile_model: bool = False) -> Prepared:
    """One training step of ``cfg.train.batch_size`` synthetic clips as a closure, run twice, its analytic FLOPs."""
    set_kernel_mode(cfg.model.kernels)
    model = build_model(cfg).to(device)
    if any(cfg.train.activation_checkpointing):
        apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    apply_compile(model, cfg.train.compile)
    model.train()
    optimizer = build_optimizer(model, cfg)
    ema = TargetEMA(*model.ema_pairs(), cfg.train.ema_tau_base, cfg.train.ema_tau_end, cfg.train.steps)
    B, m, g = cfg.train.batch_size, cfg.model, torch.Generator().manual_seed(cfg.train.seed)
    masks_cpu = build_mask_sampler(cfg).sample(B, g)
    masks = [LevelMasks(x.context.to(device), x.target.to(device)) for x in masks_cpu]
    clips = torch.randint(0, 256, (B, cfg.data.frames, m.in_chans, m.img_size, m.img_size), dtype=torch.uint8,
                          generator=g).to(device)
    actions = torch.randn(B, cfg.data.frames, m.action_dim, generator=g).to(device) if m.action_dim else None
    forward = torch.compile(model) if compile_model else model
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")

    def step() -> None:
        set_kernel_mode(cfg.model.kernels)  # process-wide: steps of several variants run in turn
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(clips, masks, actions)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(2):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return Prepared(cfg, step, step_flops(cfg, B, *mask_token_counts(masks_cpu)), *times)


def variant_config(config: str, variant: Variant, batch: int) -> Config:
    path, base = CONFIGS[config]  # the variant's own batch size, if it sets one, wins
    return load_config(path, [*base, *BASELINE, f"train.batch_size={batch * variant.batch_factor}", *variant.overrides])


def _free(device: torch.device) -> None:
    set_kernel_mode("auto")
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _prepare_fitting(config: str, variant: Variant, batch: int, device: torch.device,
                     skipped: list[str]) -> tuple[Prepared | None, int]:
    """The variant prepared, and its batch: the baseline's halves while it runs out of memory."""
    while True:
        try:
            return prepare(variant_config(config, variant, batch), device, variant.compile), batch
        except Exception as err:  # recorded: one failing variant must not hide the others
            error, oom = failure(err), "out of memory" in str(err).lower()
        _free(device)  # outside the except block: its traceback no longer holds the variant's tensors
        if not (oom and variant.name == "baseline" and batch > 1):
            skipped.append(f"{config} {variant.name} at batch {batch}: {error}")
            return None, batch
        batch //= 2
        print(f"{config}: out of memory, trying batch {batch}", flush=True)


def measure_case(run: Session, config: str, batch: int, todo: list[Variant]) -> None:
    """A row per variant of one config, saved after each measurement. CPU: every variant built, then timed in
    turn; CUDA: one at a time, each with all the memory. ``--profile``: the baseline's and fast's step profiles."""
    device, skipped = run.device, run.info["skipped"]
    peak_flops = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    baseline_rate = None
    for group in [todo] if device.type == "cpu" else [[v] for v in todo]:
        prepared: dict[str, Prepared] = {}
        for variant in group:
            if run.out_of_time():
                skipped.append(f"{config} {variant.name}: past the --deadline")
                continue
            p, batch = _prepare_fitting(config, variant, batch, device, skipped)
            if p is not None:
                prepared[variant.name] = p
        if not prepared:
            continue
        memory = {name: step_memory(p.step, device) for name, p in prepared.items()}
        # 5 to 20 rounds, for ~2 s (--quick) or ~6 s of the slowest step; each step synchronises itself
        slowest = max(p.estimate_s for p in prepared.values())
        reps = int(min(20, max(5, (2.0 if run.args.quick else 6.0) / max(slowest, 1e-3))))
        times = interleaved({name: p.step for name, p in prepared.items()}, torch.device("cpu"), reps, warmup=0)
        for name, p in prepared.items():
            t, s, b, m = times[name], times[name]["ms"] * 1e-3, p.cfg.train.batch_size, p.cfg.model
            tokens_per_clip = sum(level_time_steps(p.cfg)) * (m.img_size // m.patch_size) ** 2
            baseline_rate = b / s if name == "baseline" else baseline_rate
            run.rows.append({"config": config, "variant": name, "batch": b, **t, "first_step_s": p.first_s,
                             "clips_per_s": b / s, "tokens_per_s": b * tokens_per_clip / s, "tokens_per_clip":
                             tokens_per_clip, "flops_per_step": p.flops.train_step, **memory[name],
                             "speedup": b / s / baseline_rate if baseline_rate else None,
                             **({"mfu": p.flops.train_step / s / peak_flops} if peak_flops else {})})
            print(row_line(run.rows[-1]), flush=True)
            if run.profiles is not None and name in ("baseline", "fast"):
                run.profiles[f"{config} {name} B{b}"] = profile_step(p.step, device)
        run.save()
        del prepared
        _free(device)


def categorize(name: str) -> str:
    """The category of a kernel or operator name ('other' if none matches)."""
    return next((cat for cat, pattern in CASES["train_step"]["categories"] if re.search(pattern, name.lower())),
                "other")


def profile_step(step: Callable[[], None], device: torch.device) -> dict:
    """One warm call of ``step`` under ``torch.profiler``: per category the CUDA kernels' device time (CPU: the
    operators' self time), and a row for the wall time none accounts for, so the rows add up to the step;
    ``{"wall_ms", "rows": [{category, ms, share}], "top": [(name, ms)]}``, sorted by time."""
    cuda, by_name, busy, end = device.type == "cuda", {}, 0.0, float("-inf")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        step()  # synchronises itself
        wall_us = (time.perf_counter() - start) * 1e6
    events = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    for name, us in ([(n, e - s) for n, s, e in events] if cuda else
                     [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]):
        by_name[name] = by_name.get(name, 0.0) + us
    for _, s, e in sorted(events, key=lambda x: x[1]):  # the union of the kernels' intervals
        busy, end = (busy + e - max(s, end), e) if e > end else (busy, end)
    sums: dict[str, float] = {}
    for name, us in by_name.items():
        sums[categorize(name)] = sums.get(categorize(name), 0.0) + us
    gap = "host gaps (no kernel running)" if cuda else "outside operators (Python, dispatch)"
    sums[gap] = max(wall_us - (busy if cuda else sum(by_name.values())), 0.0)
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    return {"wall_ms": wall_us / 1e3, "top": [(name[:90], us / 1e3) for name, us in top],
            "rows": sorted(({"category": c, "ms": us / 1e3, "share": us / wall_us} for c, us in sums.items()),
                           key=lambda r: -r["ms"])}


def format_profile(title: str, summary: dict) -> str:
    """A markdown table of the categories, then the 15 costliest kernels or operators."""
    lines = [f"### {title}: one warm step, {summary['wall_ms']:.1f} ms wall", "",
             "| where | ms | share of the step |", "|---|---:|---:|"]
    lines += [f"| {r['category']} | {r['ms']:.2f} | {r['share']:.1%} |" for r in summary["rows"]]
    lines += ["", "| costliest kernels / operators | ms |", "|---|---:|"]
    return "\n".join(lines + [f"| `{name}` | {ms:.2f} |" for name, ms in summary["top"]]) + "\n"


def scaling(run: Session) -> None:
    """One sweep per factor, the others at the base, a sweep's points timed as variants of the baseline; per sweep
    the log-log slopes of the step time and of its FLOPs against the factor (``fits``)."""
    (config, sweeps), keys = CASES["train_step"]["scaling"][run.device.type], CASES["train_step"]["scaling_keys"]
    run.info |= {"base": f"{config} batch {SCALING_BATCH}", "fits": {}}
    prepare(variant_config(config, Variant("", []), 2), run.device)  # one-time warm-up
    for sweep, values in sweeps.items():
        points = {f"{sweep}={v}": v for v in (values[:3] if run.args.quick else values)}
        start = len(run.rows)
        measure_case(run, config, SCALING_BATCH, [Variant(p, [f"{keys[sweep]}={v}"]) for p, v in points.items()])
        swept = run.rows[start:]
        for r in swept:
            r |= {"sweep": sweep, "value": points[r["variant"]]}
        if len(swept) >= 2:
            x = np.log([r["value"] for r in swept])
            fit = {f"{name}_slope": float(np.polyfit(x, np.log([r[key] for r in swept]), 1)[0])
                   for name, key in (("time", "ms"), ("flops", "flops_per_step"))}
            run.info["fits"][sweep] = fit
            print(f"{sweep:>9}: time ~ x^{fit['time_slope']:.2f}, FLOPs ~ x^{fit['flops_slope']:.2f}")


def compare_variants(run: Session) -> None:
    """Each config's variants against its baseline: the tiny model, and ViT-B on CUDA."""
    args, device = run.args, run.device
    cases = {"tiny_cpu": 8 if args.quick and device.type == "cpu" else 32}
    if device.type == "cuda":
        cases["vitb_3level"] = 16 if args.quick else 64
    else:
        run.info["skipped"].append("vitb_3level: needs a GPU (one step of one clip is ~1.4 TFLOP)")
    for config, batch in cases.items():
        if args.configs is not None and config not in args.configs:
            continue
        path, base = CONFIGS[config]
        todo, skipped = variants(device, args.quick, load_config(path, base).model.levels)
        if args.variants is not None:  # the baseline, then the named ones in the order given
            by_name = {v.name: v for v in todo}
            todo = [todo[0], *(by_name[n] for n in args.variants if n in by_name and n != "baseline")]
        run.info["skipped"] += [f"{config} {s}" for s in skipped]
        if device.type == "cpu":  # one-time allocations (thread pools, workspaces) must not land on a variant
            prepare(variant_config(config, todo[0], 2), device)
        measure_case(run, config, batch, todo)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which no measurement starts")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None, help="default: all")
    parser.add_argument("--variants", nargs="+", default=None, help="after the baseline, in this order (default all)")
    parser.add_argument("--profile", action="store_true", help="profile one step of baseline and fast")
    parser.add_argument("--scaling", action="store_true", help="the scaling sweeps instead of the variants")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # stable medians on a shared machine
    info = device_info(device) | {"memory": " ".join(step_memory.__doc__.split()), "skipped": [],
                                  "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
    run = Session("scaling" if args.scaling else "train_step", args, device, info,
                  profiles={} if args.profile and not args.scaling else None)
    (scaling if args.scaling else compare_variants)(run)
    for note in info["skipped"]:
        print("skipped:", note)
    print(f"wrote {run.save()}")


if __name__ == "__main__":
    main()
