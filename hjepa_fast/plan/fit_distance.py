"""``hjepa plan --fit-distance``: one temporal distance head per level, fitted on the frozen target
features of the rollouts the run was trained on, saved as ``RUN/distance-ENV.pt`` (``energy.save_heads``).

A state ``t`` of an episode is featured per level as the planner sees states: as an outcome, level l's
target tokens of the last step of the clip window ending at frame ``t`` (the episode's first frame repeated
before it starts, as ``PlanningModel.history_frames`` does); as a goal, the same of a clip of frame ``t``
alone (``PlanningModel.goal``). The rollouts' ``train`` split fits the heads, the ``val`` split scores them:
the Spearman correlation of the head's distance with the step gap of pairs on one held-out episode."""
from __future__ import annotations

from pathlib import Path

import torch

from hjepa_fast.data.rollouts import Rollouts
from hjepa_fast.errors import UserError

from .diagnose import spearman
from .distance import DistanceHead, fit_head
from .energy import distance_path, save_heads
from .world_model import PlanningModel


@torch.no_grad()
def episode_features(wm: PlanningModel, obs: torch.Tensor, batch: int = 64) -> tuple[list[torch.Tensor], ...]:
    """An episode's observations ``[T, C, H, W]`` -> per level, its states as outcomes and as goals, each
    ``[T, hw * D_l]`` (module docstring)."""
    T, F = len(obs), wm.frames
    window = (torch.arange(T)[:, None] - F + 1 + torch.arange(F)).clamp_min(0)  # [T, F] frame indices
    outcomes: list[list[torch.Tensor]] = [[] for _ in range(wm.levels)]
    goals: list[list[torch.Tensor]] = [[] for _ in range(wm.levels)]
    for start in range(0, T, batch):
        rows = window[start:start + batch]
        for clips, out in ((obs[rows], outcomes), (obs[start:start + batch, None].expand(-1, F, -1, -1, -1), goals)):
            for level, tokens in enumerate(wm.model.encode_targets(clips.contiguous().to(wm.device))):
                out[level].append(tokens[:, -wm.hw:].flatten(1).float().cpu())
    return [torch.cat(o) for o in outcomes], [torch.cat(g) for g in goals]


def level_features(wm: PlanningModel, episodes: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
    """Episodes (each ``[T, C, H, W]``, one ``T``) -> per level, outcomes and goals ``[E, T, hw * D_l]``."""
    per_episode = [episode_features(wm, obs) for obs in episodes]
    return tuple([torch.stack([ep[form][level] for ep in per_episode]) for level in range(wm.levels)]
                 for form in (0, 1))


def held_out_rank(head: DistanceHead, outcomes: torch.Tensor, goals: torch.Tensor, pairs: int = 2000,
                  seed: int = 0) -> float:
    """Spearman correlation of ``head``'s distance (outcome ``i`` to goal ``j``) with the gap ``|i - j|`` over
    random pairs of one episode each (``outcomes``, ``goals``: ``[E, T, F]``)."""
    E, T, _ = outcomes.shape
    g = torch.Generator().manual_seed(seed)
    e, i, j = (torch.randint(n, (pairs,), generator=g) for n in (E, T, T))
    return spearman(head(outcomes[e, i], goals[e, j]).numpy(), (i - j).abs().numpy())


def fit_distance(run: str | Path, env_name: str, wm: PlanningModel, steps: int = 2000, seed: int = 0) -> dict:
    """Fit and save the heads of ``run`` (planning model ``wm``) on the rollouts of ``env_name`` it was
    trained on (its ``data.root``); refuses rollouts of another environment. Returns ``{"path", "levels":
    [{"held_out_rank", "train_episodes", "val_episodes"}]}``."""
    cfg = wm.cfg
    if steps < 1:
        raise UserError(f"--fit-steps must be >= 1, got {steps}")
    if cfg.data.dataset != "rollouts":
        raise UserError(f"--fit-distance needs a run trained on rollouts (data.dataset=rollouts), not "
                        f"{cfg.data.dataset!r}")
    m = cfg.model
    train, val = (Rollouts(cfg.data.root, split, wm.frames, m.img_size, m.in_chans) for split in ("train", "val"))
    if train.meta["env"] != env_name:
        raise UserError(f"the run's rollouts ({cfg.data.root}) are of {train.meta['env']!r}, not {env_name!r}")
    if len(train.obs) < 2:
        raise UserError(f"--fit-distance needs >= 2 training episodes in {cfg.data.root}, got {len(train.obs)}")
    fit_out, fit_goal = level_features(wm, train.obs)
    val_out, val_goal = level_features(wm, val.obs)
    heads, levels = [], []
    for level in range(wm.levels):
        heads.append(fit_head(fit_out[level], fit_goal[level], steps=steps, seed=seed + level))
        levels.append({"held_out_rank": held_out_rank(heads[-1], val_out[level], val_goal[level]),
                       "train_episodes": len(train.obs), "val_episodes": len(val.obs)})
    path = distance_path(run, env_name)
    save_heads(path, [h.cpu() for h in heads], wm, env_name, {"levels": levels, "steps": steps, "seed": seed})
    return {"path": str(path), "levels": levels}


def format_fit(result: dict) -> str:
    lines = ["learned distance heads (Spearman of the head's distance with the step gap, held-out episodes)"]
    lines += [f"  level {k + 1}: {lv['held_out_rank']:.3f}  ({lv['train_episodes']} episodes fitted, "
              f"{lv['val_episodes']} held out)" for k, lv in enumerate(result["levels"])]
    lines.append(f"written: {result['path']}")
    return "\n".join(lines)
