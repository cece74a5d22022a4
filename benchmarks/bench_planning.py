"""Planning speed: milliseconds per action of a planning agent against the number of candidates, for each
planner (CEM, MPPI, gradient) flat (level 1 plans toward the goal) and hierarchical (2 levels), with the
analytic FLOPs per action and the FLOP rate achieved.

An action is one ``PlanningAgent.act`` on a panworld episode (a history of random steps, a goal): observe
(encode the history), then at each planned level ``iterations`` batched world-model calls over all
candidates, plus (2 levels) the subgoal prediction and the lift of every candidate's level-1 prediction
to level 2. The model is the config's (default ``configs/panworld_tiny.yaml``), freshly initialised:
speed does not depend on the weights (``--run RUN_DIR`` loads a trained checkpoint instead). fp32, as
``hjepa plan`` runs it.

Candidates: CEM and MPPI score ``candidates`` sampled action sequences per iteration (``iterations``,
default 3 as in ``hjepa plan``). The gradient planner's candidates are its parallel starts, each getting a
forward and a backward per iteration; it runs 3x the iterations, as ``build_planner`` gives it (so at equal
candidates it costs ~9x a sampling planner). ``hjepa plan --samples N`` gives it only N // 8 starts; here
the x-axis is the batch of every world-model call, the same for all planners. On CPU at default sizes the
gradient planner stops at 128 candidates (2 levels at 512 take ~25 s per action on one core).

Timing: the first call (warm start state, allocator) and, for calls under 0.5 s, a second one are not
timed; then the median and IQR of 3 to 15 calls (enough for ~3 s, ~0.5 s with ``--quick``), each ended by a
CUDA synchronise on GPU. ``flops_per_action`` is the ``PlanningModel.flops`` added per call (every call
does the same work; ``hjepa_fast.flops``: matmuls only, backward = 2x forward); ``gflops_per_s`` is that
over the median time.
On CPU one thread by default (``--threads``): on a shared machine spinning OpenMP threads stall small ops.

``python -m benchmarks.bench_planning [--quick] [--device cuda|cpu] [--out DIR] [--config PATH]
[--run RUN_DIR] [--iterations N] [--threads N] [--deadline S]``
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import DEFAULT_OUT, device_info, write_results
from hjepa_fast.config import Config, load_config
from hjepa_fast.envs import make_env
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.plan.agent import PlanningAgent
from hjepa_fast.plan.planners import CEM, MPPI, GradientPlanner, build_planner
from hjepa_fast.plan.world_model import PlanningModel
from hjepa_fast.train.builders import build_model

PLANNERS = ("cem", "mppi", "grad")
CANDIDATES = (16, 32, 64, 128, 256, 512)
QUICK_CANDIDATES = (8, 16, 32)
GRAD_MAX_CPU = 128  # the gradient planner's largest point on CPU at default sizes
NAME = "planning"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--quick", action="store_true", help=f"candidates {QUICK_CANDIDATES} only (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="configs/panworld_tiny.yaml", help="model config (fresh weights)")
    parser.add_argument("--run", type=Path, default=None, help="a run folder: its config and trained checkpoint")
    parser.add_argument("--iterations", type=int, default=3, help="CEM/MPPI iterations (gradient: 3x)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: stable medians)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no new measurement starts (results so far are kept)")
    return parser.parse_args(argv)


def build_world_model(config: str, run: Path | None, device: torch.device) -> tuple[PlanningModel, Config]:
    """The planning model of ``run`` (trained weights) or of ``config`` (fresh weights) on ``device``."""
    state = None
    if run is not None:
        from hjepa_fast.eval.probe import load_run

        cfg, state = load_run(run)
    else:
        cfg = load_config(config, [])
    set_kernel_mode(cfg.model.kernels)
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state["model"])
    return PlanningModel(model.to(device), cfg), cfg


def episode(cfg: Config, wm: PlanningModel, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """A panworld episode with a full history (``history - 1`` random steps): frames, actions, goal frame."""
    env = make_env("panworld", view=cfg.model.img_size, channels=cfg.model.in_chans)
    rng = np.random.default_rng(seed)
    frames, actions = [env.reset(seed)], []
    for _ in range(wm.history - 1):
        actions.append(rng.uniform(-1.0, 1.0, env.action_dim))
        frames.append(env.step(actions[-1]))
    return frames, actions, env.goal_observation()


def make_planner(name: str, candidates: int, iterations: int) -> CEM | MPPI | GradientPlanner:
    """``build_planner``'s planner with ``candidates`` samples per iteration (gradient: parallel starts)."""
    planner = build_planner(name, candidates, iterations)
    return dataclasses.replace(planner, samples=candidates)


def time_calls(call: Callable[[], object], device: torch.device, target_s: float) -> dict:
    """Median and IQR in ms of ``call`` after one or two untimed calls; as many calls (3 to 15) as fit
    ``target_s`` at the first call's speed."""

    def timed() -> float:
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    estimate, untimed = timed(), 1
    if estimate < 0.5:
        estimate, untimed = timed(), 2
    reps = int(min(15, max(3, target_s / max(estimate, 1e-4))))
    times = [timed() * 1e3 for _ in range(reps)]
    q = statistics.quantiles(times, n=4)
    return {"ms": statistics.median(times), "ms_q25": q[0], "ms_q75": q[2], "reps": reps, "untimed": untimed}


def measure_point(wm: PlanningModel, ep: tuple, planner: str, levels: int, candidates: int, iterations: int,
                  device: torch.device, target_s: float) -> dict:
    """One row: the time and FLOPs of one action of a ``levels``-level agent with ``planner``."""
    frames, actions, goal = ep
    agent = PlanningAgent(wm, make_planner(planner, candidates, iterations), levels)
    agent.reset(goal)
    generator = torch.Generator().manual_seed(0)
    before = wm.flops
    t = time_calls(lambda: agent.act(frames, actions, generator), device, target_s)
    flops = (wm.flops - before) / (t.pop("untimed") + t["reps"])  # every call does the same work
    its = agent.planner.iterations
    return {"planner": planner, "levels": levels, "candidates": candidates, "iterations": its,
            "path": path_name(planner, levels), "case": f"N={candidates}",
            **t, "ms_per_action": t["ms"], "flops_per_action": flops, "gflops_per_s": flops / t["ms"] / 1e6}


def path_name(planner: str, levels: int) -> str:
    return f"{planner} {'flat' if levels == 1 else f'hier-{levels}'}"


def format_row(r: dict) -> str:
    return (f"{r['path']:<11} N={r['candidates']:<4} it {r['iterations']:<2} {r['ms']:10.1f} ms/action "
            f"(IQR {r['ms_q25']:.1f}-{r['ms_q75']:.1f}, {r['reps']} calls) {r['flops_per_action'] / 1e9:9.3f} GFLOP "
            f"{r['gflops_per_s']:8.1f} GFLOP/s")


def save_json(info: dict, rows: list[dict], out: Path) -> None:
    """The rows so far in ``out/planning.json`` (``write_results``'s format, without redrawing its plot)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps({"benchmark": NAME, **info, "rows": rows}, indent=2))


def plot(rows: list[dict], info: dict, path: Path) -> None:
    """Log-log: ms per action (left) and achieved GFLOP/s (right) against candidates, a line per
    planner x levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["path"] for r in rows):
        pts = [r for r in rows if r["path"] == name]
        xs = [r["candidates"] for r in pts]
        axes[0].errorbar(xs, [r["ms"] for r in pts], fmt="o-", capsize=3, label=name,
                         yerr=[[r["ms"] - r["ms_q25"] for r in pts], [r["ms_q75"] - r["ms"] for r in pts]])
        axes[1].plot(xs, [r["gflops_per_s"] for r in pts], "o-", label=name)
    for ax, ylabel in zip(axes, ("ms per action (median, IQR)", "achieved GFLOP/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("candidates per planner iteration")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"planning speed, {info['config']} on {info.get('name', info['device'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def points(device: torch.device, quick: bool) -> list[tuple[str, int, int]]:
    """(planner, levels, candidates) in measuring order: by candidates, so a deadline cuts the largest."""
    sizes = QUICK_CANDIDATES if quick else CANDIDATES
    return [(p, k, n) for n in sizes for p in PLANNERS for k in (1, 2)
            if not (p == "grad" and device.type == "cpu" and not quick and n > GRAD_MAX_CPU)]


def sweep(wm: PlanningModel, ep: tuple, args: argparse.Namespace, device: torch.device, info: dict,
          started: float) -> list[dict]:
    """The rows of every point, ``info["skipped"]`` noting the others. Past ``--deadline``, or where a
    point would end past it (its line's previous point's wall time, scaled by the candidates), no new
    point starts."""
    rows: list[dict] = []
    last: dict[str, tuple[int, float]] = {}  # path -> (candidates, wall s) of its latest point
    for planner, levels, candidates in points(device, args.quick):
        point = f"{planner} levels={levels} N={candidates}"
        if levels > wm.levels:
            info["skipped"].append(f"{point}: the model has {wm.levels} level(s)")
            continue
        path = path_name(planner, levels)
        n, wall = last.get(path, (candidates, 0.0))
        if args.deadline is not None and time.perf_counter() - started + wall * candidates / n > args.deadline:
            info["skipped"].append(f"{point}: would end past the --deadline of {args.deadline:.0f} s")
            continue
        begun = time.perf_counter()
        try:
            row = measure_point(wm, ep, planner, levels, candidates, args.iterations, device,
                                0.5 if args.quick else 3.0)
        except Exception as err:  # e.g. out of memory at the largest point: keep the others
            info["skipped"].append(f"{point}: {type(err).__name__}: {str(err)[:200]}")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        last[path] = (candidates, time.perf_counter() - begun)
        rows.append(row)
        print(format_row(row), flush=True)
        save_json(info, rows, args.out)  # partial results survive a kill
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    wm, cfg = build_world_model(args.config, args.run, device)
    info = device_info(device) | {"config": str(args.run or args.config), "weights": "trained" if args.run else
                                  "fresh", "precision": "fp32", "model_levels": wm.levels, "skipped": []}
    if not args.quick and device.type == "cpu":
        info["skipped"].append(f"grad above {GRAD_MAX_CPU} candidates: too slow on CPU (~25 s per 2-level action)")
    rows = sweep(wm, episode(cfg, wm), args, device, info, started)
    for note in info["skipped"]:
        print("skipped:", note)
    json_path, png_path = write_results(NAME, info, rows, args.out, label="path", group="case")
    plot(rows, info, args.out / f"{NAME}_loglog.png")
    print(f"wrote {json_path}, {png_path} and {args.out / f'{NAME}_loglog.png'}")


if __name__ == "__main__":
    main()
