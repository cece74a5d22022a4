"""Receding-horizon agents: flat (level 1 plans toward the goal) and hierarchical (the top level plans
macro-actions toward the goal; its predicted latents become subgoals for the level below).

At level k the plan's variables are one action per level-k step (held for the step's ``span`` frames):
over the whole imagined future at the top, over the first future step of level k+1 below it (the rest of
the future keeps the plan from above). The top level's cost is the energy (``energy``: the latent L1
distance by default, or a learned distance) of its predicted step ``energy_frames`` frames ahead (default:
its last) to the goal's embedding; level k's cost is the energy of its prediction, encoded one level up, to
the subgoal (level k + 1's energy). With ``energy_path`` the top level's cost is that distance averaged
over every imagined step up to ``energy_frames`` ahead (a running cost: stay near the goal along the way)
instead of the one step. With one level this is exactly flat planning. Only the first primitive action is
executed; the next step plans again from the new observation."""
from __future__ import annotations

import numpy as np
import torch

from hjepa_fast.envs import Env, replay

from .energy import Energy, LatentEnergy
from .planners import CEM, MPPI, GradientPlanner
from .world_model import PlanningModel, State

Planner = CEM | MPPI | GradientPlanner


class PlanningAgent:
    """``energy_frames``: how far ahead the top level's prediction is compared with the goal, in frames
    (rounded up to the top level's steps; None: its last predicted step). Nearer predictions are more
    accurate; the replanning at every step carries the agent on. ``energy_path``: average the distance
    over every imagined step up to there. ``energy``: how far tokens are from a goal (default: latent L1)."""

    def __init__(self, wm: PlanningModel, planner: Planner, levels: int = 1, energy_frames: int | None = None,
                 energy_path: bool = False, energy: Energy | None = None):
        if not 1 <= levels <= wm.levels:
            raise ValueError(f"levels must be in [1, {wm.levels}] (the model's levels), got {levels}")
        if energy_frames is not None and not 1 <= energy_frames <= wm.horizon:
            raise ValueError(f"energy_frames must be in [1, {wm.horizon}] (the imagined future), got {energy_frames}")
        self.wm, self.planner, self.levels, self.energy_frames = wm, planner, levels, energy_frames
        self.energy_path, self.energy = energy_path, energy or LatentEnergy()
        self.goal: list[torch.Tensor] = []
        self.previous: torch.Tensor | None = None  # the last level-1 plan, for a warm start

    def reset(self, goal_frame: np.ndarray, task_seed: int | None = None) -> None:
        """A new episode toward ``goal_frame``; ``task_seed`` (the seed its environment was reset with) is
        only used by agents that replay the environment."""
        self.goal, self.previous = self.wm.goal(goal_frame), None

    def _expand(self, level: int, variables: torch.Tensor, first: int, base: torch.Tensor) -> torch.Tensor:
        """variables ``[N, n, A]`` for level steps ``first .. first + n`` -> primitive slots
        ``[N, horizon, A]``: slot s moves frame s to s + 1, which lies in level step (s + 1) // span;
        slots outside the planned steps come from ``base`` ``[horizon, A]`` (the plan from above)."""
        wm = self.wm
        slots = torch.arange(wm.history - 1, wm.frames - 1, device=variables.device)
        step = (slots + 1) // wm.span[level] - first
        inside = (step >= 0) & (step < variables.shape[1])
        out = base.expand(variables.shape[0], -1, -1).clone()
        out[:, inside] = variables[:, step[inside]]
        return out

    @torch.no_grad()
    def act(self, frames: list[np.ndarray], actions: list[np.ndarray], generator: torch.Generator) -> np.ndarray:
        wm, A = self.wm, self.wm.action_dim
        state = self._observe(frames, actions)
        base = torch.zeros(wm.horizon, A, device=wm.device)
        subgoal = None
        for level in reversed(range(self.levels)):
            first = wm.context_steps[level]
            n = wm.steps[level] - first if subgoal is None else wm.span[level + 1] // wm.span[level]
            cost = self._cost(state, level, first, n, base, subgoal)
            init = None
            if level == 0 and self.previous is not None and self.previous.shape[0] == n:
                init = torch.cat([self.previous[1:], self.previous[-1:]])
            plan = self.planner.plan(cost, n, A, generator, init, device=wm.device)
            if level == 0:
                self.previous = plan.actions
            base = self._expand(level, plan.actions[None], first, base)[0]
            if level > 0:
                subgoal = self._subgoal(state, level, first, base)
        return base[0].cpu().numpy()

    def _subgoal(self, state: State, level: int, first: int, base: torch.Tensor) -> torch.Tensor:
        """Level ``level``'s predicted first future step ``[hw, D]`` under the plan ``base`` ``[horizon, A]``:
        the subgoal of the level below."""
        return self.wm.predict(state, level, base[None], range(first, first + 1))[0, 0]

    def _observe(self, frames: list[np.ndarray], actions: list[np.ndarray]) -> State | None:
        """What the costs start from: the world model's encoding of the episode so far."""
        return self.wm.observe(frames, actions)

    def _cost(self, state: State, level: int, first: int, n: int, base: torch.Tensor, subgoal: torch.Tensor | None):
        wm = self.wm

        def cost(variables: torch.Tensor) -> torch.Tensor:
            future = self._expand(level, variables, first, base)
            if subgoal is None:  # the top level: its predicted step(s) up to energy_frames ahead against the goal
                step = self._energy_step(level)
                start = first if self.energy_path else step
                return self._energy(level, wm.predict(state, level, future, range(start, step + 1)), self.goal[level])
            pred = wm.predict(state, level, future, range(first, first + n))
            return self._energy(level + 1, wm.lift(state, level, pred, first), subgoal)

        return cost

    def _energy(self, level: int, tokens: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """``self.energy`` of level ``level``'s tokens ``[N, (steps,) hw, D]`` to ``goal``, its FLOPs counted."""
        grad = 3 if torch.is_grad_enabled() and tokens.requires_grad else 1
        self.wm.flops += grad * self.energy.flops(level, tokens.shape[:-2].numel())
        return self.energy(level, tokens, goal)

    def _energy_step(self, level: int) -> int:
        """The step of ``level`` whose prediction the energy compares with the goal."""
        wm = self.wm
        if self.energy_frames is None:
            return wm.steps[level] - 1
        ahead = -(-self.energy_frames // wm.span[level])  # whole steps of this level, rounded up
        return min(wm.context_steps[level] + ahead, wm.steps[level]) - 1


class OracleAgent(PlanningAgent):
    """Planning with the environment itself as the world model, flat or hierarchical (``levels``): every
    candidate is played out in a private instance of the environment (replayed from the task's seed), its
    real clip encoded by the target encoders, then scored by the same energy; a subgoal is the real outcome
    of the plan from above. Its success is what perfect predictors would reach with this energy, goal
    embedding and planner: the ceiling of the agent with the same ``levels``."""

    def __init__(self, wm: PlanningModel, planner: Planner, env: Env, energy_frames: int | None = None,
                 energy_path: bool = False, energy: Energy | None = None, levels: int = 1):
        super().__init__(wm, planner, levels, energy_frames, energy_path, energy)
        self.env, self.task_seed = env, None
        self.episode: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])

    def reset(self, goal_frame: np.ndarray, task_seed: int | None = None) -> None:
        if task_seed is None:
            raise ValueError("the oracle replays the environment: reset it with the task's seed")
        super().reset(goal_frame)
        self.task_seed = task_seed

    def _observe(self, frames: list[np.ndarray], actions: list[np.ndarray]) -> None:
        """The oracle replays the episode itself: no encoding of it by the world model."""
        self.episode = (frames, actions)

    def _play(self, future: np.ndarray) -> np.ndarray:
        """The real clip ``[frames, C, H, W]`` of the history followed by ``future`` ``[horizon, A]``."""
        frames, actions = self.episode
        return np.stack(self.wm.history_frames(frames) + replay(self.env, self.task_seed, actions, future)[0])

    def _real(self, future: torch.Tensor) -> list[torch.Tensor]:
        """Each level's target encoding of the real clips of ``future`` ``[N, horizon, A]``: ``[N, T_l, hw, D_l]``."""
        wm, N = self.wm, len(future)
        played = [self._play(f) for f in future.cpu().numpy().astype(np.float64)]
        wm.flops += N * wm.encode_flops(online=False)
        encoded = wm.model.encode_targets(torch.from_numpy(np.stack(played)).to(wm.device))
        return [t.view(N, wm.steps[k], wm.hw, -1) for k, t in enumerate(encoded)]

    def _cost(self, state: State | None, level: int, first: int, n: int, base: torch.Tensor,
              subgoal: torch.Tensor | None):
        wm = self.wm

        def cost(variables: torch.Tensor) -> torch.Tensor:
            real = self._real(self._expand(level, variables, first, base))
            if subgoal is None:  # the top level: its real step(s) up to energy_frames ahead against the goal
                step = self._energy_step(level)
                return self._energy(level, real[level][:, (first if self.energy_path else step):step + 1],
                                    self.goal[level])
            return self._energy(level + 1, real[level + 1][:, wm.context_steps[level + 1]], subgoal)

        return cost

    def _subgoal(self, state: State | None, level: int, first: int, base: torch.Tensor) -> torch.Tensor:
        """The real outcome of the plan from above at ``level``'s first future step ``[hw, D]``."""
        return self._real(base[None])[level][0, first]


class RandomAgent:
    """The baseline: uniform random actions in ``[-1, 1]^action_dim``."""

    def __init__(self, action_dim: int):
        self.action_dim = action_dim

    def reset(self, goal_frame: np.ndarray, task_seed: int | None = None) -> None:
        pass

    def act(self, frames: list[np.ndarray], actions: list[np.ndarray], generator: torch.Generator) -> np.ndarray:
        return (torch.rand(self.action_dim, generator=generator, dtype=torch.float64) * 2 - 1).numpy()
