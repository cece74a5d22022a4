"""Rooms: a point agent in the unit square split into rooms by walls with doors (after eb_jepa's Two Rooms
task). Start and goal lie in different rooms, so a greedy move toward the goal hits a wall: the tasks need a
long horizon, where a hierarchy has a chance to help. Embedded (no package), rendered in pixels: walls grey,
the agent a bright square; the goal observation is the agent drawn at the goal.

- ``tworooms``: one wall at x = 0.5 with one door; start and goal in opposite rooms (one door to pass).
- ``fourrooms``: walls at x = 0.5 and y = 0.5, one door in each of the four wall segments; start and goal
  in diagonally opposite rooms (two doors to pass, either way round)."""
from __future__ import annotations

import numpy as np

from .base import PointGoalEnv, check_action

Span = tuple[float, float]


class Rooms(PointGoalEnv):
    """Arena ``[0, 1]^2``; a vertical wall at x = 0.5 with doors at y in ``vertical_doors``, and (if
    ``horizontal_doors`` is not None) a horizontal wall at y = 0.5 with doors at x in ``horizontal_doors``.
    Action = velocity x ``max_speed`` per step. A step whose x motion would cross the vertical wall outside
    a door keeps its y motion and drops its x motion, and likewise for the horizontal wall (x motion first)."""

    action_dim = 2

    def __init__(self, view: int = 32, channels: int = 3, max_speed: float = 0.08, tolerance: float = 0.08,
                 max_steps: int = 40, vertical_doors: tuple[Span, ...] = ((0.4, 0.6),),
                 horizontal_doors: tuple[Span, ...] | None = None, wall: float = 0.04):
        self.view, self.channels, self.max_speed, self.tolerance = view, channels, max_speed, tolerance
        self.max_steps, self.half_wall = max_steps, wall / 2
        self.vertical_doors, self.horizontal_doors = tuple(vertical_doors), horizontal_doors
        self.obs_shape = (channels, view, view)
        self.pos = self.goal = np.zeros(2)
        grid = (np.arange(view) + 0.5) / view
        in_wall = np.abs(grid - 0.5) <= max(self.half_wall, 0.5 / view)
        self.background = np.zeros((view, view), dtype=np.uint8)  # rows = y, columns = x
        self.background[np.ix_(~_in_doors(grid, self.vertical_doors), in_wall)] = 110
        if horizontal_doors is not None:
            self.background[np.ix_(in_wall, ~_in_doors(grid, horizontal_doors))] = 110

    def room_point(self, rng: np.random.Generator, room: tuple[int, int]) -> np.ndarray:
        """A uniform point of room ``(column, row)`` (0: left / bottom half), clear of the walls."""
        margin = self.half_wall + 0.05
        low = lambda side: 0.05 if side == 0 else 0.5 + margin  # noqa: E731
        high = lambda side: 0.5 - margin if side == 0 else 0.95  # noqa: E731
        column, row = room
        if self.horizontal_doors is None:  # one wall: the room spans the whole height
            return np.array([rng.uniform(low(column), high(column)), rng.uniform(0.05, 0.95)])
        return np.array([rng.uniform(low(column), high(column)), rng.uniform(low(row), high(row))])

    def step(self, action: np.ndarray) -> np.ndarray:
        a = check_action(action, self.action_dim)
        new = np.clip(self.pos + self.max_speed * a, 0.0, 1.0)
        if self._blocked(self.pos[0], new[0], self.pos[1], new[1], self.vertical_doors):
            new[0] = self.pos[0]
        if self.horizontal_doors is not None and self._blocked(self.pos[1], new[1], self.pos[0], new[0],
                                                                self.horizontal_doors):
            new[1] = self.pos[1]
        self.pos = new
        return self.render()

    def _blocked(self, before: float, after: float, across_before: float, across_after: float,
                 doors: tuple[Span, ...]) -> bool:
        """Whether motion from ``before`` to ``after`` touches the wall band at 0.5 while the position along
        the wall (before and after the step) is not inside one door."""
        lo, hi = 0.5 - self.half_wall, 0.5 + self.half_wall
        crosses = min(before, after) <= hi and max(before, after) >= lo
        through = any(d0 <= across_before <= d1 and d0 <= across_after <= d1 for d0, d1 in doors)
        return crosses and not through

    def observe(self, pos: np.ndarray) -> np.ndarray:
        img = np.repeat(self.background[None], self.channels, axis=0)
        x, y = np.clip((pos * self.view).astype(int), 1, self.view - 2)
        img[0, y - 1:y + 2, x - 1:x + 2] = 255
        if self.channels > 1:
            img[1:, y - 1:y + 2, x - 1:x + 2] = 60
        return img


def _in_doors(grid: np.ndarray, doors: tuple[Span, ...]) -> np.ndarray:
    return np.any([(grid >= d0) & (grid <= d1) for d0, d1 in doors], axis=0)


class TwoRooms(Rooms):
    """One wall with one door (``door``); start and goal in opposite rooms, either way round."""

    distance_buckets = (0.0, 0.4, 0.7)

    def __init__(self, view: int = 32, channels: int = 3, max_speed: float = 0.08, tolerance: float = 0.08,
                 max_steps: int = 40, door: Span = (0.4, 0.6), wall: float = 0.04):
        super().__init__(view, channels, max_speed, tolerance, max_steps, (door,), None, wall)
        self.door = door

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        side = rng.integers(2)
        start, goal = self.room_point(rng, (0, 0)), self.room_point(rng, (0, 0))
        goal[0] = 1.0 - goal[0]  # the mirror image of a left-room point
        self.pos, self.goal = (start, goal) if side == 0 else (goal, start)
        return self.render()


class FourRooms(Rooms):
    """Two walls, a door in each of their four segments; start and goal in diagonally opposite rooms."""

    distance_buckets = (0.0, 0.7, 0.9)

    def __init__(self, view: int = 32, channels: int = 3, max_speed: float = 0.08, tolerance: float = 0.08,
                 max_steps: int = 60, doors: tuple[Span, Span] = ((0.2, 0.32), (0.68, 0.8)), wall: float = 0.04):
        super().__init__(view, channels, max_speed, tolerance, max_steps, doors, doors, wall)

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        column, row = (int(v) for v in rng.integers(2, size=2))
        self.pos = self.room_point(rng, (column, row))
        self.goal = self.room_point(rng, (1 - column, 1 - row))
        return self.render()
