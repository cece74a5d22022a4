"""Planning speed: ms per action of a planning agent (``PlanningAgent.act`` on a panworld episode) against the
candidates, for CEM, MPPI and the gradient planner (its candidates are parallel starts, at 3x the iterations), flat
and 2-level, with the analytic FLOPs per action and the FLOP rate; the config's model, fresh weights, fp32 as
``hjepa plan`` runs it. One untimed call, then 3 to 15 (enough for ~3 s, ~0.5 s with ``--quick``)."""
from __future__ import annotations

import dataclasses
import gc
import time

import numpy as np
import torch

from benchmarks.harness import cli, device_info, failure, interleaved, row_line, write_results
from hjepa_fast.config import Config, load_config
from hjepa_fast.envs import make_env
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.plan.agent import PlanningAgent
from hjepa_fast.plan.planners import build_planner
from hjepa_fast.plan.world_model import PlanningModel
from hjepa_fast.train.builders import build_model

PLANNERS = ("cem", "mppi", "grad")
CANDIDATES = (16, 32, 64, 128, 256, 512)
QUICK_CANDIDATES = (8, 16, 32)
GRAD_MAX_CPU = 128  # the gradient planner's largest point on CPU at default sizes


def episode(cfg: Config, wm: PlanningModel, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """A panworld episode with a full history (``history - 1`` random steps): frames, actions, goal frame."""
    env = make_env("panworld", view=cfg.model.img_size, channels=cfg.model.in_chans)
    rng = np.random.default_rng(seed)
    frames, actions = [env.reset(seed)], []
    for _ in range(wm.history - 1):
        actions.append(rng.uniform(-1.0, 1.0, env.action_dim))
        frames.append(env.step(actions[-1]))
    return frames, actions, env.goal_observation()


def measure_point(wm: PlanningModel, ep: tuple, planner: str, levels: int, candidates: int, iterations: int,
                  device: torch.device, target_s: float) -> dict:
    """One row: the time and FLOPs of one action of a ``levels``-level agent with ``planner``."""
    frames, actions, goal = ep
    agent = PlanningAgent(wm, dataclasses.replace(build_planner(planner, candidates, iterations), samples=candidates),
                          levels)
    agent.reset(goal)
    generator, before = torch.Generator().manual_seed(0), wm.flops
    act = lambda: agent.act(frames, actions, generator)
    start = time.perf_counter()
    act()  # untimed: warm start state, allocator; its time sizes the rest
    reps = int(min(15, max(3, target_s / max(time.perf_counter() - start, 1e-4))))
    t = interleaved({"act": act}, device, reps, warmup=0)["act"]
    flops = (wm.flops - before) / (1 + reps)  # every call does the same work
    return {"planner": planner, "levels": levels, "candidates": candidates, "iterations": agent.planner.iterations,
            "path": f"{planner} {'flat' if levels == 1 else f'hier-{levels}'}", "case": f"N={candidates}",
            **t, "ms_per_action": t["ms"], "flops_per_action": flops, "gflops_per_s": flops / t["ms"] / 1e6}


def points(device: torch.device, quick: bool) -> list[tuple[str, int, int]]:
    """(planner, levels, candidates) in measuring order: by candidates, so a deadline cuts the largest."""
    return [(p, k, n) for n in (QUICK_CANDIDATES if quick else CANDIDATES) for p in PLANNERS for k in (1, 2)
            if not (p == "grad" and device.type == "cpu" and not quick and n > GRAD_MAX_CPU)]


def main(argv: list[str] | None = None) -> None:
    parser = cli(__doc__)
    parser.add_argument("--config", default="configs/panworld_tiny.yaml", help="model config (fresh weights)")
    parser.add_argument("--iterations", type=int, default=3, help="CEM/MPPI iterations (gradient: 3x)")
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which no measurement starts")
    args = parser.parse_args(argv)
    started, device, cfg = time.perf_counter(), torch.device(args.device), load_config(args.config, [])
    if device.type == "cpu":
        torch.set_num_threads(1)  # stable medians on a shared machine
    set_kernel_mode(cfg.model.kernels)
    wm = PlanningModel(build_model(cfg).to(device), cfg)
    info = device_info(device) | {"config": args.config, "weights": "fresh", "precision": "fp32",
                                  "model_levels": wm.levels, "skipped": []}
    if not args.quick and device.type == "cpu":
        info["skipped"].append(f"grad above {GRAD_MAX_CPU} candidates: too slow on CPU (~25 s per 2-level action)")
    ep, rows, last = episode(cfg, wm), [], {}  # last: path -> (candidates, wall s) of its latest point
    for planner, levels, candidates in points(device, args.quick):
        point, path = f"{planner} levels={levels} N={candidates}", (planner, levels)
        n, wall = last.get(path, (candidates, 0.0))
        if levels > wm.levels:
            info["skipped"].append(f"{point}: the model has {wm.levels} level(s)")
        elif args.deadline is not None and time.perf_counter() - started + wall * candidates / n > args.deadline:
            info["skipped"].append(f"{point}: would end past the --deadline of {args.deadline:.0f} s")
        else:
            begun = time.perf_counter()
            try:
                rows.append(measure_point(wm, ep, planner, levels, candidates, args.iterations, device,
                                          0.5 if args.quick else 3.0))
            except Exception as err:  # out of memory at the largest point, say: keep the others
                info["skipped"].append(f"{point}: {failure(err)}")
                gc.collect()
                continue
            last[path] = (candidates, time.perf_counter() - begun)
            print(row_line(rows[-1]), flush=True)
            write_results("planning", info, rows, args.out)  # partial results survive a kill
    for note in info["skipped"]:
        print("skipped:", note)
    print(f"wrote {write_results('planning', info, rows, args.out)}")


if __name__ == "__main__":
    main()
