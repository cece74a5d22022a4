"""How the training-step time grows with clip length (frames), levels, resolution and batch: one sweep per factor
around a base config, the others held at the base, and the fitted slope ``a`` of ``time ~ x^a`` per sweep beside
that of the analytic FLOPs (``hjepa_fast.flops``): a time slope below the FLOP slope means fixed costs (launches,
Python) still matter at that size. Base: the tiny CPU config at batch 8 on CPU, the ViT-B 3-level recipe at batch
8 on CUDA; the step is ``bench_train_step``'s baseline, a sweep's points built first and timed in turn.

``python -m benchmarks.bench_scaling [--quick] [--device cuda|cpu] [--out DIR] [--batch N]``
"""
from __future__ import annotations

import gc
import time

import numpy as np
import torch

from benchmarks.bench_train_step import BASELINE, CONFIGS, build_step, parse_args, prepare, round_robin
from benchmarks.harness import device_info, loglog, write_results
from hjepa_fast.config import load_config

# (config, sweep -> values): data.frames must split into the levels' strides
SWEEPS = {"cpu": ("tiny_cpu", {"frames": [16, 32, 64], "levels": [1, 2, 3], "img_size": [16, 32, 64],
                               "batch": [2, 4, 8, 16]}),
          "cuda": ("vitb_3level", {"frames": [32, 64, 96], "levels": [1, 2, 3], "img_size": [112, 160, 224],
                                   "batch": [2, 4, 8, 16]})}
KEYS = {"frames": "data.frames", "levels": "model.levels", "img_size": "model.img_size", "batch": "train.batch_size"}


def fit_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    args = parse_args(__doc__, "batch of the base config (default 8)")
    started, device = time.perf_counter(), torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    config, sweeps = SWEEPS["cuda" if device.type == "cuda" else "cpu"]
    path, base = CONFIGS[config]
    batch, sweeps = args.batch or 8, {k: v[:3] if args.quick else v for k, v in sweeps.items()}
    info, rows, fits = device_info(device) | {"base": f"{config} batch {batch}", "skipped": []}, [], {}
    build_step(load_config(path, [*base, *BASELINE, "train.batch_size=2"]), device)[0]()  # one-time warm-up
    for sweep, values in sweeps.items():
        if args.deadline is not None and time.perf_counter() - started > args.deadline:
            info["skipped"].append(f"{sweep}: past the --deadline of {args.deadline:.0f} s")
            continue
        prepared, times = {}, {}
        try:
            for value in values:
                prepared[value] = prepare(load_config(path, [*base, *BASELINE, f"train.batch_size={batch}",
                                                             f"{KEYS[sweep]}={value}"]), device)
        except Exception as err:  # out of memory at the largest point, say: keep the others
            info["skipped"].append(f"{sweep}={value}: {type(err).__name__}: {str(err)[:200]}")
        try:
            if prepared:
                times = round_robin({v: p.step for v, p in prepared.items()},
                                    max(p.estimate_s for p in prepared.values()), args.quick)
        except Exception as err:  # out of memory with every point alive: keep the other sweeps
            info["skipped"].append(f"{sweep}: {type(err).__name__}: {str(err)[:200]}")
        for value, t in times.items():
            flops = prepared[value].flops.train_step
            rows.append({"sweep": sweep, "value": value, "point": f"{sweep}={value}", **t, "flops_per_step": flops})
            print(f"{sweep:>9} = {value:<4} {t['ms']:9.1f} ms (IQR {t['ms_q25']:.1f}-{t['ms_q75']:.1f})  "
                  f"{flops / 1e9:9.2f} GFLOP", flush=True)
        del prepared
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
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
    loglog(args.out / "scaling_loglog.png", f"training-step scaling, {info['base']} on {info['name']}",
           [(sweep, "step ms (median)", {f"time ~ x^{fit['time_slope']:.2f}, FLOPs ~ x^{fit['flops_slope']:.2f}":
                                         [(r["value"], r["ms"]) for r in rows if r["sweep"] == sweep]})
            for sweep, fit in fits.items()])
    print(f"wrote {json_path}, {png_path} and {args.out / 'scaling_loglog.png'}")


if __name__ == "__main__":
    main()
