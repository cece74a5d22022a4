"""Can this world model plan at all? Two numbers to read before spending hours on ``hjepa plan``.

At the start of each task (after a short random history) ``candidates`` random action sequences are
imagined by the model and also played out in the environment (replayed from the task's seed). Per task:
- ``action_sensitivity``: the clip-to-clip std over candidates of the predicted last step (L2-normalised
  tokens) over the same std of the target encodings of the real outcomes: near 0, the predictor ignores
  the actions and no planner can do better than chance;
- ``rank_corr_predicted``: Spearman correlation of the flat planner's energy (``latent_cost`` of the
  predicted last step to the goal) with the real final distance to the goal: what the planner optimises
  against what success needs;
- ``rank_corr_true``: the same energy on the real outcomes' target encodings: the ceiling a perfect
  predictor would reach with this energy and goal embedding;
- ``rank_corr_path``: the energy averaged over every imagined step (``hjepa plan --energy-path``), predicted."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn.functional import normalize

from hjepa_fast.envs import Env

from .agent import latent_cost
from .evaluate import TASK_SEED
from .world_model import PlanningModel


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = lambda x: np.argsort(np.argsort(x)).astype(float)
    ra, rb = ranks(a), ranks(b)
    denom = ra.std() * rb.std()
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / denom) if denom > 0 else 0.0


def _replay(env: Env, seed: int, history: list[np.ndarray], future: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Reset ``env`` with ``seed``, replay ``history``, then play ``future`` ``[H, A]`` (an environment is
    deterministic for a seed, and a replay needs no copyable simulator): the future frames and the final
    goal distance."""
    env.reset(seed)
    for a in history:
        env.step(a)
    frames = [env.step(a) for a in future]
    return frames, env.goal_distance()


@torch.no_grad()
def diagnose(wm: PlanningModel, env: Env, tasks: int = 8, candidates: int = 32, seed: int = 0) -> dict:
    """Per-task and mean ``action_sensitivity``, ``rank_corr_predicted``, ``rank_corr_true`` (see above).
    Candidates hold a random action for 4 steps at a time (as ``hjepa collect`` explores)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in range(tasks):
        frames, actions = [env.reset(TASK_SEED + task)], []
        for _ in range(wm.history - 1):
            actions.append(env.random_action(rng))
            frames.append(env.step(actions[-1]))
        state, goal = wm.observe(frames, actions), wm.goal(env.goal_observation())[0]
        held = rng.uniform(-1, 1, (candidates, -(-wm.horizon // 4), wm.action_dim))
        future = np.repeat(held, 4, axis=1)[:, :wm.horizon]
        path = wm.predict(state, 0, torch.tensor(future, dtype=torch.float32, device=wm.device),
                          range(wm.context_steps[0], wm.steps[0]))
        pred = path[:, -1]
        outcomes = [_replay(env, TASK_SEED + task, actions, f) for f in future]
        clips = torch.from_numpy(np.stack([np.stack((frames + seen)[-wm.frames:]) for seen, _ in outcomes]))
        real = wm.model.encode_targets(clips.to(wm.device))[0][:, -wm.hw:]
        distance = np.array([d for _, d in outcomes])
        rows.append({
            "task": task,
            "action_sensitivity": float(normalize(pred, dim=-1).std(0).mean() / normalize(real, dim=-1).std(0).mean()),
            "rank_corr_predicted": _spearman(latent_cost(pred, goal).cpu().numpy(), distance),
            "rank_corr_true": _spearman(latent_cost(real, goal).cpu().numpy(), distance),
            "rank_corr_path": _spearman(latent_cost(path, goal).cpu().numpy(), distance),
        })
    keys = ("action_sensitivity", "rank_corr_predicted", "rank_corr_true", "rank_corr_path")
    return {"tasks": rows, **{k: float(np.mean([r[k] for r in rows])) for k in keys}}


def format_diagnosis(result: dict) -> str:
    lines = ["world-model diagnosis (per task: action sensitivity, rank correlation of the planning energy with "
             "the real final goal distance: predicted, on the real outcomes, predicted and averaged over the path)",
             f"{'task':>5}{'sensitivity':>13}{'corr predicted':>16}{'corr true':>11}{'corr path':>11}"]
    rows = [*result["tasks"], {"task": "mean", **result}]
    lines += [f"{r['task']:>5}{r['action_sensitivity']:>13.4f}{r['rank_corr_predicted']:>16.3f}"
              f"{r['rank_corr_true']:>11.3f}{r['rank_corr_path']:>11.3f}" for r in rows]
    return "\n".join(lines)
