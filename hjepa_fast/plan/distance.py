"""A learned temporal distance: how many steps apart two states are, from features alone.

Why: on tworooms the latent L1 distance of an outcome's encoding to the goal's does not rank outcomes by
their distance to the goal (the small agent is a few pixels of the frame), so no planner can use it. The
number of steps between two states of one reward-free rollout is a distance the data gives for free (no
reward, no expert, no privileged state). ``DistanceHead`` learns it on frozen features.

Formulation: an MLP embedding ``f`` and ``d(a, b) = ||f(a) - f(b)||_2``, a symmetric metric (the rooms and
panworld can be walked both ways). ``fit_head`` trains it with
- positives: two states ``i``, ``j`` of one trajectory, the loss ``(log1p d - log1p |i - j|)^2``: the log
  keeps long gaps (whose step counts are noisy: a random walk wanders) from dominating short ones, which
  carry the local geometry;
- negatives: states of two different trajectories, whose gap is unknown but mostly long: a one-sided loss
  ``relu(log1p cap - log1p d)^2`` only keeps them at least ``cap`` steps apart (default: twice the longest
  gap a trajectory shows; on tworooms it ranks real outcomes better than once or four times it, and
  without negatives the head does not rank them at all). It has no upper bound, so far pairs are not all
  squashed onto ``cap``: their order comes from the embedding's geometry (the triangle inequality chains
  the short gaps), which is what ranking far goals needs.
The second state of a pair is, half of the time, taken in its goal form (``goals``: the planner encodes a
goal as a clip of the goal frame alone, unlike an outcome's clip), so the head compares outcomes with
goals as the planner does."""
from __future__ import annotations

import math

import torch
from torch import nn


class DistanceHead(nn.Module):
    """``d(a, b) = ||f(a) - f(b)||_2`` in steps; ``f``: standardised features ``[..., F]`` -> an MLP ->
    ``[..., dim]``. The standardisation (``mean``, ``std``, from the fitting set) is a buffer, saved with it."""

    def __init__(self, features: int, hidden: int = 128, dim: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.f = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                               nn.Linear(hidden, dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` -> ``[..., dim]``."""
        return self.f((x - self.mean) / self.std)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances ``[...]`` of broadcastable ``a`` and ``b`` ``[..., F]``."""
        return embedding_distance(self.embed(a), self.embed(b))

    def flops(self, count: int) -> float:
        """Forward FLOPs of embedding ``count`` feature vectors (the matrix products)."""
        return 2.0 * count * sum(m.in_features * m.out_features for m in self.f if isinstance(m, nn.Linear))


def embedding_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L2 distance over the last dimension, with a gradient at 0 (a pair at distance 0 is a positive)."""
    return ((a - b).pow(2).sum(-1) + 1e-8).sqrt()


def fit_head(states: torch.Tensor, goals: torch.Tensor, steps: int = 2000, batch: int = 256, lr: float = 1e-3,
             cap: float | None = None, hidden: int = 128, dim: int = 32, seed: int = 0) -> DistanceHead:
    """A ``DistanceHead`` fitted to trajectories: ``states`` ``[E, T, F]`` (episode ``e``'s features at step
    ``t``, as outcomes are encoded) and ``goals`` ``[E, T, F]`` (the same states encoded as goals; pass
    ``states`` when they are encoded alike). Each step draws ``batch // 2`` positive and ``batch // 2``
    negative pairs (module docstring); ``cap`` (default ``2 * (T - 1)``, twice the longest gap a trajectory
    shows) is the gap negatives are kept beyond. Deterministic for ``seed``."""
    E, T, F = states.shape
    if goals.shape != states.shape:
        raise ValueError(f"goals must have the states' shape {tuple(states.shape)}, got {tuple(goals.shape)}")
    if E < 2 or T < 2:
        raise ValueError(f"need >= 2 trajectories of >= 2 steps, got {E} of {T}")
    g = torch.Generator().manual_seed(seed)
    head = DistanceHead(F, hidden, dim)
    flat = torch.cat([states, goals], 1).reshape(-1, F)
    head.mean.copy_(flat.mean(0))
    head.std.copy_(flat.std(0).clamp_min(1e-6))
    log_cap = math.log1p(2 * (T - 1) if cap is None else cap)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    half = max(1, batch // 2)
    for _ in range(steps):
        e, i, j = _positive_pairs(E, T, half, g)
        other = (e + torch.randint(1, E, (half,), generator=g)) % E  # another trajectory
        k = torch.randint(T, (half,), generator=g)
        a = states[torch.cat([e, e]), torch.cat([i, i])]
        b = _either_form(states, goals, torch.cat([e, other]), torch.cat([j, k]), g)
        d = head(a, b).log1p()
        positive = (d[:half] - (j - i).abs().float().log1p()).pow(2).mean()
        negative = (log_cap - d[half:]).clamp_min(0).pow(2).mean()
        opt.zero_grad()
        (positive + negative).backward()
        opt.step()
    return head.eval().requires_grad_(False)


def _positive_pairs(E: int, T: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``n`` pairs (episode, i, j) of one trajectory, the gap ``|i - j|`` uniform over ``0 .. T - 1`` (so
    every scale is seen as often), then the pair placed uniformly where it fits."""
    e = torch.randint(E, (n,), generator=g)
    gap = torch.randint(T, (n,), generator=g)
    i = (torch.rand(n, generator=g) * (T - gap)).long()
    j = i + gap
    swap = torch.rand(n, generator=g) < 0.5  # either order: the loss is symmetric, the forms are not
    return e, torch.where(swap, j, i), torch.where(swap, i, j)


def _either_form(states: torch.Tensor, goals: torch.Tensor, e: torch.Tensor, t: torch.Tensor,
                 g: torch.Generator) -> torch.Tensor:
    """Features of states ``(e, t)``, each in its goal form with probability 1/2: ``[n, F]``."""
    as_goal = (torch.rand(len(e), generator=g) < 0.5)[:, None]
    return torch.where(as_goal, goals[e, t], states[e, t])
