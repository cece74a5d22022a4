"""End-to-end training step: steps/s, clips/s, tokens/s, peak memory and (CUDA) model FLOP utilisation,
for the tiny CPU config and the ViT-B 3-level recipe, with each speed switch flipped against one baseline
side by side in the same run.

A step is what the trainer does per batch: forward (bf16 autocast on CUDA), backward, AdamW step, the
fused EMA update of every level's target encoder. It runs on one fixed synthetic batch (random uint8
clips, masks drawn once by the config's sampler): data loading is left out, and ``torch.compile`` sees
one shape (real training draws new mask sizes each step).

Variants against one baseline (``model.kernels=auto``, attention ``sdpa``, eager, foreach AdamW, no
activation checkpointing): one switch each, ``kernels=reference`` (plain PyTorch ops), ``fused AdamW``
(``train.fused_optimizer``), attention ``cudnn`` / ``flash`` / ``xformers`` (CUDA; masked attention
always runs SDPA), ``compile blocks`` (``train.compile=blocks``), ``torch.compile`` of the whole model,
``activation checkpointing`` of every level; then the switches together: ``fast`` (fused AdamW, cuDNN
attention, compiled blocks: the recipe's settings), ``fast + checkpointing`` and ``fast`` at twice the
micro-batch. ``speedup`` is the baseline's median step time over the variant's. ``--profile`` adds a
``torch.profiler`` summary of one warm step of the baseline and of ``fast`` (``step_profile.py``).

Measures: median and IQR of the step time. On CPU all variants are built first and timed round-robin,
so that the load of a shared machine hits them alike; on CUDA one variant at a time. The step ends with a
synchronise on CUDA (steps take milliseconds to seconds: the sync costs nothing, and ``do_bench`` would
take a single sample). tokens/s counts every grid token of every level per clip, as the trainer's log
does. Memory of one extra step: ``step_mem_mb`` = its peak minus what was allocated before it (CUDA
allocator; CPU resident set size, ``VmHWM - VmRSS`` from ``/proc/self/status`` with the peak reset
through ``/proc/self/clear_refs``, a proxy that counts allocator caching too) and, on CUDA,
``peak_mem_mb`` = ``torch.cuda.max_memory_allocated`` (parameters, optimiser state, EMA targets and
activations). MFU: ``hjepa_fast.flops`` (analytic, matmuls only) / time / the card's dense bf16 peak.

ViT-B runs at the largest micro-batch that fits: from ``--batch`` (default 64) halved on each
out-of-memory error. On CPU only the tiny config runs (one ViT-B 3-level step of one clip is ~1.4 TFLOP,
2/3 of it the target encoders' forward on all 3,136 level-1 tokens), on one thread by default: on a
shared machine two spinning OpenMP threads stall a tiny step for seconds.

``python -m benchmarks.bench_train_step [--quick] [--device cuda|cpu] [--out DIR] [--batch N] [--configs ...]
[--variants ...] [--profile]``
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import DEFAULT_OUT, device_info, write_results
from benchmarks.step_profile import format_profile, profile_step
from hjepa_fast.config import Config, TrainConfig, level_time_steps, load_config
from hjepa_fast.flops import StepFlops, mask_token_counts, peak_bf16_flops, step_flops
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.masks import LevelMasks
from hjepa_fast.model.attention import resolve_backend
from hjepa_fast.train.builders import build_mask_sampler, build_model, build_optimizer
from hjepa_fast.train.compile import apply_compile
from hjepa_fast.train.ema import TargetEMA

CONFIGS = {"tiny_cpu": ("configs/tiny_cpu.yaml", []),
           "vitb_3level": ("configs/vitb_3level.yaml", ["data.root=synthetic"])}  # synthetic clips: no videos read
BASELINE = ["model.kernels=auto", "model.attention_backend=sdpa", "train.fused_optimizer=false", "train.compile=none"]
FAST = ["train.fused_optimizer=true", "model.attention_backend=cudnn", "train.compile=blocks"]


@dataclasses.dataclass
class Variant:
    name: str
    overrides: list[str]
    compile: bool = False  # torch.compile of the whole model
    batch_factor: int = 1  # micro-batch = the baseline's x this


def parse_args(description: str, batch_help: str) -> argparse.Namespace:
    """The harness's flags (--out, --quick, --device) plus the end-to-end ones."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--quick", action="store_true", help="small shapes, fewer variants (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help=batch_help)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable medians)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no new measurement starts (results so far are kept)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None, help="default: all")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="variants to run after the baseline, in this order (default: all)")
    parser.add_argument("--profile", action="store_true", help="profile one step of baseline and fast")
    return parser.parse_args()


def activation_checkpointing_available() -> bool:
    try:
        from hjepa_fast.train.parallelize import apply_activation_checkpointing  # noqa: F401
    except ImportError:
        return False
    return "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainConfig)}


def variants(device: torch.device, quick: bool, levels: int) -> tuple[list[Variant], list[str]]:
    """The variants this device runs, and a note for each one it skips."""
    out = [Variant("baseline", []), Variant("kernels=reference", ["model.kernels=reference"]),
           Variant("fused AdamW", ["train.fused_optimizer=true"])]
    skipped = []
    for backend in ("cudnn", "flash", "xformers"):
        if device.type != "cuda":
            skipped.append(f"attention={backend}: CUDA only (on CPU every backend runs SDPA)")
            continue
        try:
            resolve_backend(backend)
        except ImportError as e:
            skipped.append(f"attention={backend}: {e}")
            continue
        out.append(Variant(f"attention={backend}", [f"model.attention_backend={backend}"]))
    if activation_checkpointing_available():
        flags = ",".join(["true"] * levels)
        out.append(Variant("activation checkpointing", [f"train.activation_checkpointing=[{flags}]"]))
    else:
        skipped.append("activation checkpointing: train.activation_checkpointing is not in this version")
    if device.type == "cuda" or not quick:  # last: the slowest to build, the first to give way to a deadline
        flags = ",".join(["true"] * levels)
        out += [Variant("compile blocks", ["train.compile=blocks"]), Variant("fast", FAST),
                Variant("fast + checkpointing", [*FAST, f"train.activation_checkpointing=[{flags}]"]),
                Variant("fast, 2x micro-batch", FAST, batch_factor=2),
                Variant("torch.compile", [], compile=True)]
    else:
        skipped.append("compiled variants: left out of --quick on CPU (compiling the tiny model took ~150 s on a "
                       "busy 2-core machine)")
    return out, skipped


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def step_memory(step: Callable[[], None], device: torch.device) -> dict:
    """Memory of one more step: ``step_mem_mb``, what it adds at its peak over what was allocated before
    it (activations, gradients, temporaries) and, on CUDA, ``peak_mem_mb``, everything allocated at that
    peak (parameters, optimiser state and EMA targets too). {} where it cannot be read."""
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


def build_step(cfg: Config, device: torch.device, compile_model: bool = False) -> tuple[Callable[[], None], StepFlops]:
    """One training step of ``cfg.train.batch_size`` synthetic clips on ``device`` as a closure, and its
    analytic FLOPs. Sets the process-wide kernel mode from ``cfg.model.kernels``."""
    set_kernel_mode(cfg.model.kernels)
    model = build_model(cfg).to(device)
    if any(getattr(cfg.train, "activation_checkpointing", [])):
        from hjepa_fast.train.parallelize import apply_activation_checkpointing

        apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    apply_compile(model, cfg.train.compile)
    model.train()
    optimizer = build_optimizer(model, cfg)
    targets, sources = model.ema_pairs()
    ema = TargetEMA(targets, sources, cfg.train.ema_tau_base, cfg.train.ema_tau_end, cfg.train.steps)
    B, m, g = cfg.train.batch_size, cfg.model, torch.Generator().manual_seed(cfg.train.seed)
    masks_cpu = build_mask_sampler(cfg).sample(B, g)
    masks = [LevelMasks(x.context.to(device), x.target.to(device)) for x in masks_cpu]
    clips = torch.randint(0, 256, (B, cfg.data.frames, m.in_chans, m.img_size, m.img_size), dtype=torch.uint8,
                          generator=g).to(device)
    actions = torch.randn(B, cfg.data.frames, m.action_dim, generator=g).to(device) if m.action_dim else None
    forward = torch.compile(model) if compile_model else model
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    mode = cfg.model.kernels

    def step() -> None:
        set_kernel_mode(mode)  # process-wide: steps of several variants run in turn
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(clips, masks, actions)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step, step_flops(cfg, B, *mask_token_counts(masks_cpu))


@dataclasses.dataclass
class Prepared:
    """A built, warmed-up step: ``first_s`` is its first step (compilation included), ``estimate_s`` its
    second."""

    step: Callable[[], None]
    flops: StepFlops
    first_s: float
    estimate_s: float


def prepare(cfg: Config, device: torch.device, compile_model: bool = False) -> Prepared:
    """Build the step and run it twice untimed (optimiser state, compilation, autotuning)."""
    step, flops = build_step(cfg, device, compile_model)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return Prepared(step, flops, *times)


def round_robin(steps: dict[str, Callable[[], None]], estimate_s: float, quick: bool) -> dict[str, dict]:
    """Median and IQR (the harness's statistics) of each step's time in ms, the steps timed in turn, one
    round after another, so that a change of load on a shared machine hits all of them alike. Rounds:
    enough for ~2 s (quick) or ~6 s of the slowest step, 5 to 20."""
    reps = int(min(20, max(5, (2.0 if quick else 6.0) / max(estimate_s, 1e-3))))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        out[name] = {"ms": statistics.median(ts), "ms_q25": q[0], "ms_q75": q[2], "reps": reps}
    return out


def variant_config(config: str, variant: Variant, batch: int) -> Config:
    path, base = CONFIGS[config]
    return load_config(path, [*base, *BASELINE, *variant.overrides, f"train.batch_size={batch * variant.batch_factor}"])


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free(device: torch.device) -> None:
    set_kernel_mode("auto")
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_case(config: str, batch: int, todo: list[Variant], device: torch.device, quick: bool, rows: list[dict],
                 skipped: list[str], out_of_time: Callable[[], bool], save: Callable[[], None],
                 profiles: dict[str, dict] | None = None) -> None:
    """Append a row per variant of one config to ``rows``, calling ``save`` after each measurement (partial
    results survive a timeout). CPU: all variants built, then timed round-robin. CUDA: one variant at a
    time (a dedicated GPU has no neighbours, and each variant gets all the memory); the baseline first,
    halving the batch on each out-of-memory error. ``profiles``: where given, the baseline's and fast's
    step profiles go there, keyed by ``config variant``."""
    groups = [todo] if device.type == "cpu" else [[v] for v in todo]
    cfg = variant_config(config, todo[0], batch)
    tokens_per_clip = sum(level_time_steps(cfg)) * (cfg.model.img_size // cfg.model.patch_size) ** 2
    peak_flops = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    baseline_rate = None
    for group in groups:
        prepared: dict[str, Prepared] = {}
        for variant in group:
            if out_of_time():
                skipped.append(f"{config} {variant.name}: past the --deadline")
                continue
            while True:
                error = None
                try:
                    prepared[variant.name] = prepare(variant_config(config, variant, batch), device, variant.compile)
                except Exception as err:  # record and go on: one failing variant must not hide the others
                    error = (_is_oom(err), f"{type(err).__name__}: {str(err)[:200]}")
                if error is None:
                    break
                _free(device)  # outside the except block: its traceback no longer holds the variant's tensors
                if error[0] and variant.name == "baseline" and batch > 1:  # the search halves the baseline
                    batch //= 2
                    print(f"{config}: out of memory, trying batch {batch}", flush=True)
                    continue
                skipped.append(f"{config} {variant.name} at batch {batch}: {error[1]}")
                break
        if not prepared:
            continue
        memory = {name: step_memory(p.step, device) for name, p in prepared.items()}
        times = round_robin({name: p.step for name, p in prepared.items()},
                            max(p.estimate_s for p in prepared.values()), quick)
        factors = {v.name: v.batch_factor for v in group}
        for name, p in prepared.items():
            t, s, b = times[name], times[name]["ms"] * 1e-3, batch * factors[name]
            baseline_rate = b / s if name == "baseline" else baseline_rate
            row = {"config": config, "variant": name, "batch": b, **t, "first_step_s": p.first_s,
                   "steps_per_s": 1 / s, "clips_per_s": b / s, "tokens_per_s": b * tokens_per_clip / s,
                   "tokens_per_clip": tokens_per_clip, "flops_per_step": p.flops.train_step,
                   "tflops": p.flops.train_step / s / 1e12, **memory[name],
                   "speedup": b / s / baseline_rate if baseline_rate else None}
            if peak_flops:
                row["mfu"] = p.flops.train_step / s / peak_flops
            rows.append(row)
            print(format_row(row), flush=True)
            if profiles is not None and name in ("baseline", "fast"):
                profiles[f"{config} {name} B{b}"] = profile_step(p.step, device)
        save()
        del prepared
        _free(device)


def format_row(r: dict) -> str:
    mem = f"step +{r['step_mem_mb']:6.0f} MB" if "step_mem_mb" in r else "step +     - MB"
    mem += f" peak {r['peak_mem_mb']:6.0f} MB" if "peak_mem_mb" in r else ""
    mfu = f"  MFU {r['mfu']:5.1%}" if "mfu" in r else ""
    return (f"{r['config']:<12} {r['variant']:<21} B{r['batch']:<4} {r['ms']:9.1f} ms "
            f"(IQR {r['ms_q25']:.1f}-{r['ms_q75']:.1f}) {r['clips_per_s']:8.1f} clips/s "
            f"{r['tokens_per_s']:10.0f} tok/s {mem}{mfu}" + ("" if r["speedup"] is None else f"  x{r['speedup']:.2f}"))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "ViT-B micro-batch to start the search from (tiny: its config)")
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    info = device_info(device) | {
        "memory": "step_mem_mb: peak over one step minus what was allocated before it; peak_mem_mb: "
                  "torch.cuda.max_memory_allocated" if device.type == "cuda" else
                  "step_mem_mb: peak RSS over one step minus RSS before it (VmHWM - VmRSS, Linux)",
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "skipped": []}
    cases = {"tiny_cpu": 8 if args.quick and device.type == "cpu" else 32}
    if device.type == "cuda":
        cases["vitb_3level"] = args.batch or (16 if args.quick else 64)
    else:
        info["skipped"].append("vitb_3level: needs a GPU (one step of one clip is ~1.4 TFLOP)")
    cases = {c: b for c, b in cases.items() if args.configs is None or c in args.configs}
    rows: list[dict] = []
    profiles: dict[str, dict] | None = {} if args.profile else None

    def out_of_time() -> bool:
        return args.deadline is not None and time.perf_counter() - started > args.deadline

    def save() -> tuple[Path, Path]:
        if profiles:
            info["profiles"] = profiles
            (args.out / "train_step_profile.md").write_text(
                f"{info.get('name', device.type)}, torch {torch.__version__}\n\n"
                + "\n".join(format_profile(key, summary) for key, summary in profiles.items()))
        return write_results("train_step", info, rows, args.out, label="variant", group="config")

    for config, batch in cases.items():
        path, base = CONFIGS[config]
        todo, skipped = variants(device, args.quick, load_config(path, base).model.levels)
        if args.variants is not None:  # the baseline, then the named ones in the order given
            by_name = {v.name: v for v in todo}
            todo = [todo[0], *(by_name[n] for n in args.variants if n in by_name and n != "baseline")]
        info["skipped"] += [f"{config} {s}" for s in skipped]
        if device.type == "cpu":  # one-time allocations (thread pools, workspaces) must not land on a variant
            build_step(variant_config(config, todo[0], 2), device)[0]()
        measure_case(config, batch, todo, device, args.quick, rows, info["skipped"], out_of_time, save, profiles)
    for note in info["skipped"]:
        print("skipped:", note)
    json_path, png_path = save()
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
