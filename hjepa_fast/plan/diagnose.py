"""Can this world model plan at all? Two numbers to read before spending hours on ``hjepa plan``.

At the start of each task (after a short random history) ``candidates`` random action sequences are
imagined by the model at every level and also played out in the environment (replayed from the task's
seed). Per task:
- ``action_sensitivity``: the clip-to-clip std over candidates of the predicted last step (L2-normalised
  tokens) over the same std of the target encodings of the real outcomes: near 0, the predictor ignores
  the actions and no planner can do better than chance;
- ``rank_corr_predicted``: Spearman correlation of the flat planner's energy (``latent_cost`` of the
  predicted last step to the goal) with the real final distance to the goal: what the planner optimises
  against what success needs;
- ``rank_corr_true``: the same energy on the real outcomes' target encodings: the ceiling a perfect
  predictor would reach with this energy and goal embedding;
- ``rank_corr_path``: the energy averaged over every imagined step (``hjepa plan --energy-path``), predicted;
- ``rank_corr_first``: the energy of the predicted first future step (at a higher level: the subgoal the
  hierarchical agent hands down);
- with a learned energy (``energy.LearnedEnergy``), ``learned_corr_predicted`` and ``learned_corr_true``:
  the same two correlations for that energy.
Each level is diagnosed with its own predictions, target encodings and goal embedding; the table's rows
are level 1's, with a mean row per level."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn.functional import normalize

from hjepa_fast.envs import Env, replay

from .energy import LearnedEnergy, latent_cost
from .evaluate import TASK_SEED
from .world_model import PlanningModel, State

KEYS = ("action_sensitivity", "rank_corr_predicted", "rank_corr_true", "rank_corr_path", "rank_corr_first")
LEARNED_KEYS = ("learned_corr_predicted", "learned_corr_true")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of ``a`` and ``b`` ``[n]`` (0 where either is constant)."""
    ranks = lambda x: np.argsort(np.argsort(x)).astype(float)
    ra, rb = ranks(a), ranks(b)
    denom = ra.std() * rb.std()
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / denom) if denom > 0 else 0.0


def _level_numbers(wm: PlanningModel, state: State, level: int, future: torch.Tensor, real: torch.Tensor,
                   goal: torch.Tensor, distance: np.ndarray, learned: LearnedEnergy | None) -> dict:
    """The diagnosis of one level on one task: ``future`` ``[N, horizon, A]`` imagined, ``real`` (its target
    encodings of the played-out clips, ``[N, T_l * hw, D]``) and the real final ``distance`` ``[N]``."""
    first = wm.context_steps[level]
    path = wm.predict(state, level, future, range(first, wm.steps[level]))  # [N, n, hw, D]
    real = real.view(len(real), wm.steps[level], wm.hw, -1)[:, first:]
    corr = lambda tokens: spearman(latent_cost(tokens, goal).cpu().numpy(), distance)  # noqa: E731
    numbers = {"action_sensitivity": float(normalize(path[:, -1], dim=-1).std(0).mean()
                                           / normalize(real[:, -1], dim=-1).std(0).mean()),
               "rank_corr_predicted": corr(path[:, -1]), "rank_corr_true": corr(real[:, -1]),
               "rank_corr_path": corr(path), "rank_corr_first": corr(path[:, 0])}
    if learned is not None:
        corr = lambda tokens: spearman(learned(level, tokens, goal).cpu().numpy(), distance)  # noqa: E731
        numbers |= {"learned_corr_predicted": corr(path[:, -1]), "learned_corr_true": corr(real[:, -1])}
    return numbers


@torch.no_grad()
def diagnose(wm: PlanningModel, env: Env, tasks: int = 8, candidates: int = 32, seed: int = 0,
             learned: LearnedEnergy | None = None) -> dict:
    """Per task and on average, for each level (``levels``; level 1's also at the top): the numbers of the
    module docstring, the learned energy's too when ``learned`` is given. Candidates hold a random action for
    4 steps at a time (as ``hjepa collect`` explores)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in range(tasks):
        frames, actions = [env.reset(TASK_SEED + task)], []
        for _ in range(wm.history - 1):
            actions.append(env.random_action(rng))
            frames.append(env.step(actions[-1]))
        state, goals = wm.observe(frames, actions), wm.goal(env.goal_observation())
        held = rng.uniform(-1, 1, (candidates, -(-wm.horizon // 4), wm.action_dim))
        future = np.repeat(held, 4, axis=1)[:, :wm.horizon]
        outcomes = [replay(env, TASK_SEED + task, actions, f) for f in future]
        clips = torch.from_numpy(np.stack([np.stack((frames + seen)[-wm.frames:]) for seen, _ in outcomes]))
        real = wm.model.encode_targets(clips.to(wm.device))
        distance = np.array([d for _, d in outcomes])
        future = torch.tensor(future, dtype=torch.float32, device=wm.device)
        levels = [_level_numbers(wm, state, level, future, real[level], goals[level], distance, learned)
                  for level in range(wm.levels)]
        rows.append({"task": task, **levels[0], "levels": levels})
    keys = KEYS + (LEARNED_KEYS if learned is not None else ())
    means = [{k: float(np.mean([r["levels"][level][k] for r in rows])) for k in keys} for level in range(wm.levels)]
    return {"tasks": rows, **means[0], "levels": means}


def format_diagnosis(result: dict) -> str:
    learned = LEARNED_KEYS[0] in result
    lines = ["world-model diagnosis (action sensitivity; rank correlation of the planning energy with the real "
             "final goal distance: predicted last step, real outcomes' last step, predicted path, predicted "
             "first step" + ("; the learned energy's: predicted last step, real outcomes' last step)" if learned
                             else ")"),
             f"{'task':>9}{'sensitivity':>13}{'corr predicted':>16}{'corr true':>11}{'corr path':>11}"
             f"{'corr first':>12}" + (f"{'learned pred.':>15}{'learned true':>14}" if learned else "")]
    rows = [*result["tasks"], *({"task": f"mean L{k + 1}", **level} for k, level in enumerate(result["levels"]))]
    lines += [f"{r['task']:>9}{r['action_sensitivity']:>13.4f}{r['rank_corr_predicted']:>16.3f}"
              f"{r['rank_corr_true']:>11.3f}{r['rank_corr_path']:>11.3f}{r['rank_corr_first']:>12.3f}"
              + (f"{r['learned_corr_predicted']:>15.3f}{r['learned_corr_true']:>14.3f}" if learned else "")
              for r in rows]
    return "\n".join(lines)
