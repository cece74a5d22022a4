"""Planning energies: how far a level's tokens (an imagined or real outcome) are from a goal's tokens.

- ``latent`` (the default): the mean L1 distance of the tokens to the goal's (``latent_cost``);
- ``learned``: a temporal distance head per level (``distance.DistanceHead``) fitted on the run's rollouts
  (``fit_distance``), saved as ``RUN/distance-ENV.pt``; it estimates the steps between outcome and goal.

Both take tokens ``[N, hw, D]`` (or ``[N, steps, hw, D]``: averaged over the steps) and goal tokens
``[hw, D]`` and return ``[N]``. A learned energy is tied to one run's checkpoint and one environment: a file
fitted for another is refused by name."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from hjepa_fast.checkpoint import load_checkpoint, save_checkpoint
from hjepa_fast.errors import UserError

from .distance import DistanceHead, embedding_distance
from .world_model import PlanningModel

ENERGIES = ("latent", "learned")


def latent_cost(pred: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance of tokens ``[N, hw, D]`` (or ``[N, steps, hw, D]``: averaged over the steps too)
    to goal tokens ``[hw, D]``: ``[N]``."""
    return (pred - goal).abs().flatten(1).mean(1)


class LatentEnergy:
    """``latent_cost`` at every level; no FLOPs counted (a subtraction per token, next to a forward pass)."""

    name = "latent"

    def __call__(self, level: int, tokens: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return latent_cost(tokens, goal)

    def flops(self, level: int, count: int) -> float:
        return 0.0


class LearnedEnergy:
    """Level ``level``'s ``DistanceHead`` between the flattened tokens and the goal's: estimated steps."""

    name = "learned"

    def __init__(self, heads: list[DistanceHead]):
        self.heads = heads

    def __call__(self, level: int, tokens: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        head = self.heads[level]
        d = embedding_distance(head.embed(tokens.flatten(-2)), head.embed(goal.flatten()))  # [N] or [N, steps]
        return d.flatten(1).mean(1) if d.dim() > 1 else d

    def flops(self, level: int, count: int) -> float:
        """FLOPs of scoring ``count`` token sets (the goal's embedding is one more)."""
        return self.heads[level].flops(count + 1)


Energy = LatentEnergy | LearnedEnergy


def distance_path(run: str | Path, env_name: str) -> Path:
    return Path(run) / f"distance-{env_name}.pt"


def run_fingerprint(wm: PlanningModel) -> str:
    """A hash of the run's target encoders (what the heads read): a file fitted on another run, or on an
    earlier checkpoint of this one, does not match."""
    digest = hashlib.sha256()
    for name, tensor in sorted(wm.model.target_encoders.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_heads(path: Path, heads: list[DistanceHead], wm: PlanningModel, env_name: str, fit: dict) -> None:
    """Atomically: the heads' weights and sizes, the environment, the run's fingerprint, the fit's numbers."""
    save_checkpoint(path, {"env": env_name, "fingerprint": run_fingerprint(wm), "fit": fit,
                           "heads": [{"features": h.mean.numel(), "hidden": h.f[0].out_features,
                                      "dim": h.f[-1].out_features, "state": h.state_dict()} for h in heads]})


def load_energy(name: str, run: str | Path, env_name: str, wm: PlanningModel) -> Energy:
    """The energy ``name`` (``ENERGIES``) for planning ``env_name`` with the run's model ``wm``; ``learned``
    reads ``RUN/distance-ENV.pt`` and refuses a missing file, or one fitted for another environment or run."""
    if name == "latent":
        return LatentEnergy()
    if name != "learned":
        raise UserError(f"unknown energy {name!r}; choose from {', '.join(ENERGIES)}")
    path = distance_path(run, env_name)
    fit = f"hjepa plan --run {run} --env {env_name} --fit-distance"
    if not path.is_file():
        raise UserError(f"--energy learned: no fitted distance head for {env_name} in {run} ({path.name}); "
                        f"fit one first: {fit}")
    saved = load_checkpoint(path, expect=("env", "fingerprint", "heads"))
    if saved["env"] != env_name:
        raise UserError(f"{path} was fitted for {saved['env']!r}, not {env_name!r}; refit: {fit}")
    if saved["fingerprint"] != run_fingerprint(wm) or len(saved["heads"]) != wm.levels:
        raise UserError(f"{path} was fitted on another run or checkpoint than {run}'s newest; refit: {fit}")
    heads = []
    for h in saved["heads"]:
        head = DistanceHead(h["features"], h["hidden"], h["dim"])
        head.load_state_dict(h["state"])
        heads.append(head.to(wm.device).eval().requires_grad_(False))
    return LearnedEnergy(heads)
