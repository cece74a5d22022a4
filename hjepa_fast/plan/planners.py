"""Sampling and gradient planners over action sequences ``[H, A]`` in ``[low, high]``.

Each takes ``cost_fn(actions [N, H, A]) -> costs [N]`` and calls it once per iteration on all N
candidates: one batched world-model forward per iteration, never a Python loop over candidates.

Device: the plan lives on ``device`` (default: ``init``'s, else the CPU). Noise is drawn by the caller's
``torch.Generator`` on the generator's own device (a generator is tied to one; the agents pass a CPU one) and
moved to the plan's, so a CPU seed gives the same samples whatever the model's device."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

CostFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Plan:
    actions: torch.Tensor  # [H, A], the best sequence found
    cost: float  # its cost
    evaluations: int  # candidates evaluated (sum of N over calls)


def _noise(samples: int, mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[samples, *mean.shape]`` standard normal noise from the (CPU) ``generator``, on ``mean``'s device."""
    return torch.randn(samples, *mean.shape, generator=generator, device=generator.device).to(mean.device)


def _start(horizon: int, action_dim: int, init: torch.Tensor | None, device: torch.device | str | None) -> torch.Tensor:
    """The initial mean ``[H, A]``: a copy of ``init`` (on ``device`` if given), else zeros on ``device`` (CPU)."""
    if init is None:
        return torch.zeros(horizon, action_dim, device=device)
    return init.to(device).clone() if device is not None else init.clone()


def _candidates(mean: torch.Tensor, std: torch.Tensor | float, samples: int, low: float, high: float,
                generator: torch.Generator) -> torch.Tensor:
    """``[samples, H, A]`` Gaussian samples around ``mean`` in range; row 0 is the mean itself, so the
    current plan always competes."""
    cand = (mean + std * _noise(samples, mean, generator)).clamp(low, high)
    cand[0] = mean.clamp(low, high)
    return cand


def _keep_best(best: torch.Tensor, best_cost: float, cand: torch.Tensor,
               costs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The better of the best so far and this iteration's best candidate."""
    i = int(costs.argmin())
    return (cand[i].detach().clone(), float(costs[i])) if costs[i] < best_cost else (best, best_cost)


@dataclass
class _SamplingPlanner:
    """The loop CEM and MPPI share: sample around a mean, score every candidate in one call, refit the
    sampling distribution (``_refit``), keep the best candidate seen. ``init`` ``[H, A]`` (e.g. the last
    plan shifted by one step) warm-starts the mean."""

    samples: int = 64
    iterations: int = 3
    std: float = 0.5
    low: float = -1.0
    high: float = 1.0

    def _refit(self, cand: torch.Tensor, costs: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(new mean ``[H, A]``, new std) from candidates ``[N, H, A]`` and their costs ``[N]``."""
        raise NotImplementedError

    def plan(self, cost_fn: CostFn, horizon: int, action_dim: int, generator: torch.Generator,
             init: torch.Tensor | None = None, device: torch.device | str | None = None) -> Plan:
        mean = _start(horizon, action_dim, init, device)
        std = torch.full((horizon, action_dim), self.std, device=mean.device)
        best, best_cost = mean.clamp(self.low, self.high), float("inf")
        for _ in range(self.iterations):
            cand = _candidates(mean, std, self.samples, self.low, self.high, generator)
            costs = cost_fn(cand)
            mean, std = self._refit(cand, costs, std)
            best, best_cost = _keep_best(best, best_cost, cand, costs)
        return Plan(best, best_cost, self.samples * self.iterations)


@dataclass
class CEM(_SamplingPlanner):
    """Cross-entropy method (V-JEPA 2-AC's planner): refit the Gaussian to the ``elites`` cheapest (all
    candidates when there are fewer)."""

    elites: int = 8

    def _refit(self, cand, costs, std):
        elite = cand[costs.topk(min(self.elites, len(costs)), largest=False).indices]
        return elite.mean(0), elite.std(0, unbiased=False) + 1e-3


@dataclass
class MPPI(_SamplingPlanner):
    """Model-predictive path integral: the mean moves to the cost-softmax-weighted average of the samples
    (temperature relative to the batch's cost spread, so it does not depend on the cost's scale); the
    spread shrinks by 0.7 per iteration."""

    temperature: float = 0.1

    def _refit(self, cand, costs, std):
        spread = (costs.max() - costs.min()).clamp(min=1e-8)
        w = torch.softmax(-(costs - costs.min()) / (self.temperature * spread), dim=0)
        return (w[:, None, None] * cand).sum(0), std * 0.7


@dataclass
class GradientPlanner:
    """Adam on the actions through the (differentiable) cost, from ``samples`` starts at once (the mean
    plus noise); actions are kept in range by clamping after each step."""

    samples: int = 8
    iterations: int = 10
    lr: float = 0.1
    std: float = 0.5
    low: float = -1.0
    high: float = 1.0

    def plan(self, cost_fn: CostFn, horizon: int, action_dim: int, generator: torch.Generator,
             init: torch.Tensor | None = None, device: torch.device | str | None = None) -> Plan:
        mean = _start(horizon, action_dim, init, device)
        cand = mean + self.std * _noise(self.samples, mean, generator)
        cand[0] = mean
        cand = cand.clamp(self.low, self.high).requires_grad_(True)
        opt = torch.optim.Adam([cand], lr=self.lr)
        best, best_cost = cand[0].detach().clone(), float("inf")
        for _ in range(self.iterations):
            with torch.enable_grad():
                costs = cost_fn(cand)
                opt.zero_grad()
                costs.sum().backward()
            best, best_cost = _keep_best(best, best_cost, cand, costs.detach())
            opt.step()
            with torch.no_grad():
                cand.clamp_(self.low, self.high)
        return Plan(best, best_cost, self.samples * self.iterations)


PLANNERS = {"cem": CEM, "mppi": MPPI, "grad": GradientPlanner}


def build_planner(name: str, samples: int, iterations: int) -> CEM | MPPI | GradientPlanner:
    """``name`` in ``PLANNERS``; the gradient planner runs ``samples`` starts (costlier per candidate)."""
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose from {', '.join(PLANNERS)}")
    if name == "grad":
        return GradientPlanner(samples=max(1, samples // 8), iterations=iterations * 3)
    return PLANNERS[name](samples=samples, iterations=iterations)
