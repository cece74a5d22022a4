"""The environment interface planning and collection rely on: reset with a seed, step with a bounded
action, render frames, a goal observation and a success test. Observations are uint8 ``[C, H, W]``."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def check_action(action: np.ndarray | list[float], dim: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """``action`` as float64 ``[dim]``; a wrong shape, a non-finite or out-of-range entry is refused by
    name rather than clipped, so a planner bug cannot hide behind the environment."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (dim,):
        raise ValueError(f"action must have shape ({dim},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action must be finite, got {a.tolist()}")
    if np.any(a < low - 1e-6) or np.any(a > high + 1e-6):
        raise ValueError(f"action entries must lie in [{low}, {high}], got {a.tolist()}")
    return np.clip(a, low, high)


class Env(ABC):
    """One episode at a time. Actions live in ``[-1, 1]^action_dim``; ``reset(seed)`` fixes the start and
    the goal, so a (seed, action sequence) pair always gives the same frames."""

    action_dim: int
    obs_shape: tuple[int, int, int]  # (C, H, W)
    max_steps: int
    # lower edges of the start-distance buckets that planning tables report success in (the task's units;
    # fixed per task, so tables of different runs line up); empty: no buckets
    distance_buckets: tuple[float, ...] = ()

    @abstractmethod
    def reset(self, seed: int) -> np.ndarray:
        """Start a new episode; returns the first observation."""

    @abstractmethod
    def step(self, action: np.ndarray) -> np.ndarray:
        """Apply one action (checked with ``check_action``); returns the next observation."""

    @abstractmethod
    def render(self) -> np.ndarray:
        """The current observation, uint8 ``[C, H, W]``."""

    @abstractmethod
    def goal_observation(self) -> np.ndarray:
        """What the agent would see at the goal, uint8 ``[C, H, W]``."""

    @abstractmethod
    def success(self) -> bool:
        """Whether the current state meets the task's own success criterion."""

    @abstractmethod
    def goal_distance(self) -> float:
        """Distance from the current state to the goal in the task's own units (for plots by difficulty)."""

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, self.action_dim)


def replay(env: Env, seed: int, history: list[np.ndarray], future: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Reset ``env`` with ``seed``, replay ``history``, then play ``future`` ``[H, A]`` (an environment is
    deterministic for a seed, and a replay needs no copyable simulator): the future frames and the final
    goal distance."""
    env.reset(seed)
    for a in history:
        env.step(a)
    frames = [env.step(a) for a in future]
    return frames, env.goal_distance()


class PointGoalEnv(Env):
    """An agent that is a point ``pos`` with a goal point ``goal`` (both float ``[2]``, pixels): the
    observation of a point is ``observe(pos)``, success is being within ``tolerance`` of the goal."""

    pos: np.ndarray
    goal: np.ndarray
    tolerance: float

    @abstractmethod
    def observe(self, pos: np.ndarray) -> np.ndarray:
        """What the agent sees at ``pos``, uint8 ``[C, H, W]``."""

    def render(self) -> np.ndarray:
        return self.observe(self.pos)

    def goal_observation(self) -> np.ndarray:
        return self.observe(self.goal)

    def goal_distance(self) -> float:
        return float(np.linalg.norm(self.pos - self.goal))

    def success(self) -> bool:
        return self.goal_distance() <= self.tolerance
