"""``hjepa plan``: agents on a fixed set of start/goal tasks, several planner seeds; success rate (mean
+- standard error over seeds), planning time per action and per episode, analytic FLOPs per episode;
a table, ``plan.json`` and a plot of success against the start's goal distance."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from hjepa_fast.builders import build_model
from hjepa_fast.checkpoint import load_model_state
from hjepa_fast.config import ConfigError
from hjepa_fast.envs import Env, make_env
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.runs import load_run

from .agent import OracleAgent, PlanningAgent, RandomAgent
from .energy import load_energy
from .planners import build_planner
from .world_model import PlanningModel

TASK_SEED = 10_000  # task i resets the environment with seed TASK_SEED + i, whatever the planner seed


def run_episode(env: Env, agent: PlanningAgent | RandomAgent, task: int, seed: int) -> dict:
    """One episode of task ``task`` with planner seed ``seed``; stops at the first success."""
    frames = [env.reset(TASK_SEED + task)]
    start_distance = env.goal_distance()
    agent.reset(env.goal_observation(), TASK_SEED + task)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + task)
    actions, plan_s, success = [], 0.0, env.success()
    while not success and len(actions) < env.max_steps:
        t0 = time.perf_counter()
        action = agent.act(frames, actions, generator)
        plan_s += time.perf_counter() - t0
        actions.append(np.clip(action, -1.0, 1.0))
        frames.append(env.step(actions[-1]))
        success = env.success()
    return {"success": success, "steps": len(actions), "plan_s": plan_s, "start_distance": start_distance,
            "final_distance": env.goal_distance()}


def evaluate_agent(env: Env, make_agent, tasks: int, seeds: int, wm: PlanningModel | None = None) -> dict:
    """Success rate per seed (its mean and standard error), time and FLOPs per action and episode."""
    per_seed, episodes = [], []
    for seed in range(seeds):
        agent = make_agent()
        wins = []
        for task in range(tasks):
            flops0 = wm.flops if wm is not None else 0.0
            ep = run_episode(env, agent, task, seed)
            ep["flops"] = (wm.flops - flops0) if wm is not None else 0.0
            episodes.append({**ep, "seed": seed, "task": task})
            wins.append(ep["success"])
        per_seed.append(float(np.mean(wins)))
    steps = sum(e["steps"] for e in episodes)
    plan_s = sum(e["plan_s"] for e in episodes)
    rates = np.array(per_seed)
    return {"success_mean": float(rates.mean()), "by_distance": bucket_success(episodes, env.distance_buckets),
            "success_se": float(rates.std(ddof=1) / np.sqrt(len(rates))) if len(rates) > 1 else 0.0,
            "success_per_seed": per_seed, "ms_per_action": 1e3 * plan_s / max(steps, 1),
            "s_per_episode": plan_s / len(episodes),
            "flops_per_episode": float(np.mean([e["flops"] for e in episodes])),
            "steps_per_episode": steps / len(episodes), "episodes": episodes}


def bucket_success(episodes: list[dict], edges: tuple[float, ...]) -> list[dict]:
    """Success rate of the episodes whose start distance lies in each bucket ``[edges[i], edges[i + 1])``
    (the last one open-ended): ``[{"from", "to" (None: open), "episodes", "success" (None: no episode)}]``."""
    distance = np.array([e["start_distance"] for e in episodes])
    success = np.array([e["success"] for e in episodes], dtype=float)
    out = []
    for low, high in zip(edges, [*edges[1:], None]):
        inside = (distance >= low) & (distance < (np.inf if high is None else high))
        out.append({"from": low, "to": high, "episodes": int(inside.sum()),
                    "success": float(success[inside].mean()) if inside.any() else None})
    return out


def load_world(run: str | Path, env_name: str) -> tuple[PlanningModel, Env]:
    """The run's final checkpoint as a planning model, and the environment, checked to render what it sees."""
    cfg, state = load_run(run)
    set_kernel_mode(cfg.model.kernels)
    model = build_model(cfg)
    load_model_state(model, state, state["path"])
    env = make_env(env_name)
    if env.obs_shape != (cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size):
        raise ValueError(f"{env_name} renders {env.obs_shape}, the model expects "
                         f"({cfg.model.in_chans}, {cfg.model.img_size}, {cfg.model.img_size})")
    return PlanningModel(model, cfg), env


def act_flops(wm: PlanningModel, env: Env, make_agent, samples: int) -> float:
    """Analytic FLOPs of one ``act`` (observe + plan) of ``make_agent(samples)`` at task 0's start."""
    frames = [env.reset(TASK_SEED)]
    agent = make_agent(samples)
    agent.reset(env.goal_observation())
    before = wm.flops
    agent.act(frames, [], torch.Generator().manual_seed(0))
    return wm.flops - before


def matched_samples(wm: PlanningModel, env: Env, make_agent, target_flops: float, samples: int) -> int:
    """Candidates per iteration for which one ``act`` of ``make_agent`` costs ``target_flops``: the count
    is affine in the candidates, so two measured calls (``samples``, ``2 * samples``) fix it. At least 2."""
    low, high = act_flops(wm, env, make_agent, samples), act_flops(wm, env, make_agent, 2 * samples)
    per_candidate = (high - low) / samples
    return max(2, round((target_flops - (low - per_candidate * samples)) / per_candidate))


def evaluate_planning(run: str | Path, env_name: str, tasks: int = 50, seeds: int = 3, planner: str = "cem",
                      levels: list[int] | tuple[int, ...] = (1, 2), samples: int = 64, iterations: int = 3,
                      out: str | Path | None = None, match_flops: bool = False,
                      energy_frames: int | None = None, energy_path: bool = False, oracle: bool = False,
                      energy: str = "latent") -> dict:
    """Random baseline and one planning agent per entry of ``levels`` (1: flat). ``match_flops``: each
    hierarchical agent gets the candidates per iteration that make one of its actions cost what a flat
    action with ``samples`` candidates costs, so that agents compare at an equal FLOP budget.
    ``energy_frames``, ``energy_path``: see ``PlanningAgent``. ``oracle``: one more row per entry of
    ``levels``, the same agent with the environment itself as the world model (``OracleAgent``, with
    ``samples`` candidates): the ceiling of that row.
    ``energy``: ``latent`` or ``learned`` (``energy.load_energy``), for every agent."""
    if oracle and planner == "grad":
        raise ConfigError("--oracle needs a sampling planner (cem or mppi): the environment has no gradient")
    wm, env = load_world(run, env_name)
    scorer = load_energy(energy, run, env_name, wm)
    levels = [k for k in levels if k <= wm.levels]
    rows = {"random": evaluate_agent(env, lambda: RandomAgent(env.action_dim), tasks, seeds)}
    rows["random"]["samples"] = 0
    flat_flops = None
    for k in levels:
        def make_agent(n: int, k: int = k) -> PlanningAgent:
            return PlanningAgent(wm, build_planner(planner, n, iterations), k, energy_frames, energy_path, scorer)

        n = samples
        if match_flops and k > 1:
            flat_flops = flat_flops or act_flops(wm, env, lambda m: make_agent(m, 1), samples)
            n = matched_samples(wm, env, make_agent, flat_flops, samples)
        name = f"{planner} {'flat' if k == 1 else f'hier-{k}'}"
        rows[name] = {**evaluate_agent(env, lambda n=n, k=k: make_agent(n, k), tasks, seeds, wm), "samples": n}
    replayed = make_env(env_name) if oracle else None  # the oracles' own instance: replays never touch the episode's
    for k in levels if oracle else []:
        rows[f"{planner} oracle{'' if k == 1 else f' hier-{k}'}"] = {**evaluate_agent(
            env, lambda k=k: OracleAgent(wm, build_planner(planner, samples, iterations), replayed, energy_frames,
                                         energy_path, scorer, k), tasks, seeds, wm), "samples": samples}
    result = {"run": str(run), "env": env_name, "tasks": tasks, "seeds": seeds, "planner": planner,
              "samples": samples, "match_flops": match_flops, "energy_frames": energy_frames,
              "energy_path": energy_path, "energy": energy, "oracle": oracle, "iterations": iterations,
              "date": time.strftime("%Y-%m-%d"),
              "device": "cpu", "threads": torch.get_num_threads(), "rows": rows}
    out = Path(out) if out else Path(run) / f"plan-{env_name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(result, indent=1))
    plot_success(result, out / "success_vs_distance.png")
    result["out"] = str(out)
    return result


def plot_success(result: dict, path: Path, bins: int = 4) -> Path:
    """Success rate against the start's goal distance (quantile bins), one line per agent; the legend
    gives each agent's FLOPs per episode, so equal-budget comparisons can be read off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in result["rows"].items():
        d = np.array([e["start_distance"] for e in row["episodes"]])
        s = np.array([e["success"] for e in row["episodes"]], dtype=float)
        edges = np.quantile(d, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, bins - 1)
        centres = [d[which == b].mean() for b in range(bins) if (which == b).any()]
        rates = [s[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(centres, rates, marker="o", label=f"{name} ({row['flops_per_episode'] / 1e9:.1f} GFLOP/ep)")
    ax.set_xlabel("start distance to goal")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{result['env']}: {result['tasks']} tasks x {result['seeds']} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(result: dict) -> str:
    budget = ", hierarchical candidates matched to flat FLOPs per action" if result.get("match_flops") else ""
    if result.get("energy_frames") or result.get("energy_path"):
        ahead = f"{result['energy_frames']} frames ahead" if result.get("energy_frames") else "the imagined future"
        budget += f", energy {'averaged over' if result.get('energy_path') else 'at'} {ahead}"
    if result.get("energy", "latent") != "latent":
        budget += f", {result['energy']} energy"
    w = max(14, *map(len, result["rows"]))  # the agent column fits the longest name ("cem oracle hier-2")
    lines = [f"{result['env']} ({result['tasks']} tasks x {result['seeds']} seeds, {result['planner']}, "
             f"{result['samples']} samples x {result['iterations']} iterations{budget}, {result['date']}, "
             f"{result['device']} {result['threads']} threads)",
             f"{'agent':<{w}} {'candidates':>10} {'success':>15} {'ms/action':>10} {'s/episode':>10} "
             f"{'GFLOP/action':>13} {'GFLOP/episode':>14}"]
    for name, r in result["rows"].items():
        per_action = r["flops_per_episode"] / max(r["steps_per_episode"], 1e-9)
        lines.append(f"{name:<{w}} {r['samples']:>10} {r['success_mean']:>8.3f} ± {r['success_se']:.3f} "
                     f"{r['ms_per_action']:>10.1f} {r['s_per_episode']:>10.2f} {per_action / 1e9:>13.3f} "
                     f"{r['flops_per_episode'] / 1e9:>14.2f}")
    first = next(iter(result["rows"].values()))
    if first.get("by_distance"):
        lines += ["", "success by start distance (episodes)",
                  f"{'agent':<{w}} " + " ".join(f"{_bucket_label(b):>16}" for b in first["by_distance"])]
        for name, r in result["rows"].items():
            lines.append(f"{name:<{w}} " + " ".join(f"{_bucket_cell(b):>16}" for b in r["by_distance"]))
    if "out" in result:
        lines.append(f"written: {result['out']}/plan.json, success_vs_distance.png")
    return "\n".join(lines)


def _bucket_label(bucket: dict) -> str:
    return f"[{bucket['from']:g}, {bucket['to']:g})" if bucket["to"] is not None else f">= {bucket['from']:g}"


def _bucket_cell(bucket: dict) -> str:
    rate = "-" if bucket["success"] is None else f"{bucket['success']:.3f}"
    return f"{rate} ({bucket['episodes']})"
