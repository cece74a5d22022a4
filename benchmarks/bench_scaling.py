"""How the training-step time grows with clip length ``T`` (frames), the number of levels, the resolution
and the batch: one sweep per factor around a base config, the others held at the base; a table, a
log-log plot and the fitted slope ``a`` of ``time ~ x^a`` per sweep, beside the slope of the analytic
FLOPs (``hjepa_fast.flops``) over the same points: time slope < FLOP slope means fixed costs (launches,
Python) still matter at that size; equal slopes mean the step is compute bound.

Base: the tiny CPU config at batch 8 on CPU (one thread), the ViT-B 3-level recipe at batch 8 on CUDA.
The step is ``bench_train_step``'s baseline (kernels auto, SDPA, eager) on a fixed synthetic batch; the
points of a sweep are built first and timed round-robin (``bench_train_step.round_robin``).

``python -m benchmarks.bench_scaling [--quick] [--device cuda|cpu] [--out DIR] [--batch N]``
"""
from __future__ import annotations

import gc
import time

import numpy as np
import torch

from benchmarks.bench_train_step import BASELINE, CONFIGS, build_step, parse_args, prepare, round_robin
from benchmarks.harness import device_info, write_results
from hjepa_fast.config import load_config

# (config key, overrides key, values): data.frames must split into the levels' strides; 'batch' is train.batch_size
SWEEPS = {
    "cpu": ("tiny_cpu", {"frames": [16, 32, 64], "levels": [1, 2, 3], "img_size": [16, 32, 64],
                         "batch": [2, 4, 8, 16]}),
    "cuda": ("vitb_3level", {"frames": [32, 64, 96], "levels": [1, 2, 3], "img_size": [112, 160, 224],
                             "batch": [2, 4, 8, 16]}),
}
KEYS = {"frames": "data.frames", "levels": "model.levels", "img_size": "model.img_size", "batch": "train.batch_size"}


def fit_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def plot(rows: list[dict], fits: dict, info: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = list(dict.fromkeys(r["sweep"] for r in rows))
    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.2 * len(sweeps), 3.2), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        pts = [r for r in rows if r["sweep"] == sweep]
        xs, ys = [r["value"] for r in pts], [r["ms"] for r in pts]
        ax.errorbar(xs, ys, yerr=[[r["ms"] - r["ms_q25"] for r in pts], [r["ms_q75"] - r["ms"] for r in pts]],
                    fmt="o", capsize=3)
        if sweep in fits:
            a = fits[sweep]["time_slope"]
            line = np.exp(np.polyval(np.polyfit(np.log(xs), np.log(ys), 1), np.log(xs)))
            ax.plot(xs, line, "--", label=f"time ~ x^{a:.2f}\nFLOPs ~ x^{fits[sweep]['flops_slope']:.2f}")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(sweep)
        ax.set_ylabel("step ms (median, IQR)")
    fig.suptitle(f"training-step scaling, {info['base']} on {info.get('name', info['device'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "batch of the base config (default 8)")
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    config, sweeps = SWEEPS["cuda" if device.type == "cuda" else "cpu"]
    path, base = CONFIGS[config]
    batch = args.batch or 8
    if args.quick:  # the three smallest points of each sweep
        sweeps = {k: v[:3] for k, v in sweeps.items()}
    info = device_info(device) | {"base": f"{config} batch {batch}", "skipped": []}
    build_step(load_config(path, [*base, *BASELINE, "train.batch_size=2"]), device)[0]()  # one-time warm-up
    rows = []
    for sweep, values in sweeps.items():
        if args.deadline is not None and time.perf_counter() - started > args.deadline:
            info["skipped"].append(f"{sweep}: past the --deadline of {args.deadline:.0f} s")
            continue
        prepared = {}
        for value in values:
            cfg = load_config(path, [*base, *BASELINE, f"train.batch_size={batch}", f"{KEYS[sweep]}={value}"])
            try:
                prepared[value] = prepare(cfg, device)
            except Exception as err:  # e.g. out of memory at the largest point: keep the others
                info["skipped"].append(f"{sweep}={value}: {type(err).__name__}: {str(err)[:200]}")
        times = {}
        try:
            if prepared:
                times = round_robin({v: p.step for v, p in prepared.items()},
                                    max(p.estimate_s for p in prepared.values()), args.quick)
        except Exception as err:  # e.g. out of memory with every point of the sweep alive: keep the other sweeps
            info["skipped"].append(f"{sweep}: {type(err).__name__}: {str(err)[:200]}")
        for value, p in prepared.items():
            if value not in times:
                continue
            t = times[value]
            rows.append({"sweep": sweep, "value": value, "point": f"{sweep}={value}", **t,
                         "flops_per_step": p.flops.train_step})
            print(f"{sweep:>9} = {value:<4} {t['ms']:9.1f} ms (IQR {t['ms_q25']:.1f}-{t['ms_q75']:.1f})  "
                  f"{p.flops.train_step / 1e9:9.2f} GFLOP", flush=True)
        del prepared
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fits = {}
    for sweep in sweeps:
        pts = [r for r in rows if r["sweep"] == sweep]
        if len(pts) >= 2:
            xs = [r["value"] for r in pts]
            fits[sweep] = {"time_slope": fit_slope(xs, [r["ms"] for r in pts]),
                           "flops_slope": fit_slope(xs, [r["flops_per_step"] for r in pts])}
            print(f"{sweep:>9}: time ~ x^{fits[sweep]['time_slope']:.2f}, FLOPs ~ x^{fits[sweep]['flops_slope']:.2f}")
    info["fits"] = fits
    for note in info["skipped"]:
        print("skipped:", note)
    json_path, png_path = write_results("scaling", info, rows, args.out, label="sweep", group="point")
    plot(rows, fits, info, args.out / "scaling_loglog.png")
    print(f"wrote {json_path}, {png_path} and {args.out / 'scaling_loglog.png'}")


if __name__ == "__main__":
    main()
