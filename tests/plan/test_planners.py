"""Each planner solves a problem with a known analytic world model (linear latent dynamics) to
tolerance, evaluating all candidates of an iteration in one batched call."""
from __future__ import annotations

import pytest
import torch

from hjepa_fast.plan.planners import CEM, MPPI, GradientPlanner

H, A, Z = 4, 2, 4


class LinearWorld:
    """z_{t+1} = M z_t + B u_t from z_0; cost = ||z_H - goal||^2, goal reached by a known u* in range."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.M = torch.eye(Z) * 0.9 + 0.05 * torch.randn(Z, Z, generator=g)
        self.B = torch.randn(Z, A, generator=g)
        self.z0 = torch.randn(Z, generator=g)
        self.u_star = torch.rand(H, A, generator=g) * 1.6 - 0.8
        self.goal = self.final(self.u_star[None])[0]
        self.calls: list[int] = []

    def final(self, u: torch.Tensor) -> torch.Tensor:
        z = self.z0.expand(u.shape[0], -1)
        for t in range(H):
            z = z @ self.M.T + u[:, t] @ self.B.T
        return z

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        self.calls.append(u.shape[0])
        return (self.final(u) - self.goal).pow(2).sum(-1)


@pytest.mark.parametrize("planner", [
    CEM(samples=256, iterations=25, elites=16),
    MPPI(samples=256, iterations=25, temperature=0.05),
    GradientPlanner(samples=4, iterations=200, lr=0.05),
])
def test_planner_reaches_the_goal_of_a_linear_world(planner):
    world = LinearWorld()
    start = world(torch.zeros(1, H, A)).item()
    plan = planner.plan(world, H, A, torch.Generator().manual_seed(1))
    final = world(plan.actions[None]).item()
    assert final < 1e-2 * start, f"{type(planner).__name__}: cost {final:.4f} from {start:.4f}"
    assert plan.actions.shape == (H, A) and plan.actions.abs().max() <= 1.0
    assert world.calls[1:-1] == [planner.samples] * planner.iterations  # one batched call per iteration
    assert plan.evaluations == planner.samples * planner.iterations


def test_planners_are_deterministic_for_a_generator():
    world = LinearWorld()
    a = CEM(samples=32, iterations=3).plan(world, H, A, torch.Generator().manual_seed(7)).actions
    b = CEM(samples=32, iterations=3).plan(world, H, A, torch.Generator().manual_seed(7)).actions
    assert torch.equal(a, b)
