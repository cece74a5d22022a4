"""Two Rooms: a point agent in a square arena split by a wall with one door (after eb_jepa's Two Rooms
task). Start and goal lie in opposite rooms, so a greedy move toward the goal hits the wall: the task
needs a long horizon, where a hierarchy has a chance to help. Embedded (no package), rendered in pixels:
wall grey, agent a bright square; the goal observation is the agent drawn at the goal."""
from __future__ import annotations

import numpy as np

from .base import PointGoalEnv, check_action


class TwoRooms(PointGoalEnv):
    """Arena ``[0, 1]^2``; wall at x = 0.5 with a door for y in ``door``; action = velocity x ``max_speed``
    per step. A step that would cross the wall outside the door keeps its y motion and drops its x motion."""

    action_dim = 2

    def __init__(self, view: int = 32, channels: int = 3, max_speed: float = 0.08, tolerance: float = 0.08,
                 max_steps: int = 40, door: tuple[float, float] = (0.4, 0.6), wall: float = 0.04):
        self.view, self.channels, self.max_speed, self.tolerance = view, channels, max_speed, tolerance
        self.max_steps, self.door, self.half_wall = max_steps, door, wall / 2
        self.obs_shape = (channels, view, view)
        self.pos = self.goal = np.zeros(2)
        grid = (np.arange(view) + 0.5) / view
        in_wall = np.abs(grid - 0.5) <= max(self.half_wall, 0.5 / view)
        in_door = (grid >= door[0]) & (grid <= door[1])
        self.background = np.zeros((view, view), dtype=np.uint8)
        self.background[np.ix_(~in_door, in_wall)] = 110  # rows = y, columns = x

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        side = rng.integers(2)
        margin = self.half_wall + 0.05
        left = lambda: np.array([rng.uniform(0.05, 0.5 - margin), rng.uniform(0.05, 0.95)])  # noqa: E731
        start, goal = left(), left()
        goal[0] = 1.0 - goal[0]
        self.pos, self.goal = (start, goal) if side == 0 else (goal, start)
        return self.render()

    def step(self, action: np.ndarray) -> np.ndarray:
        a = check_action(action, self.action_dim)
        new = np.clip(self.pos + self.max_speed * a, 0.0, 1.0)
        lo, hi = 0.5 - self.half_wall, 0.5 + self.half_wall
        crosses = (min(self.pos[0], new[0]) <= hi) and (max(self.pos[0], new[0]) >= lo)
        through_door = self.door[0] <= new[1] <= self.door[1] and self.door[0] <= self.pos[1] <= self.door[1]
        if crosses and not through_door:
            new[0] = self.pos[0]
        self.pos = new
        return self.render()

    def observe(self, pos: np.ndarray) -> np.ndarray:
        img = np.repeat(self.background[None], self.channels, axis=0)
        x, y = np.clip((pos * self.view).astype(int), 1, self.view - 2)
        img[0, y - 1:y + 2, x - 1:x + 2] = 255
        if self.channels > 1:
            img[1:, y - 1:y + 2, x - 1:x + 2] = 60
        return img
