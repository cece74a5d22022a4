"""The learned energy: a temporal distance head fitted on trajectories ranks states by their true distance
(where an untrained head does not), it is wired through the agents (their choice changes with it, its
FLOPs are counted, each level uses its own head), and diagnosed next to the latent energy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hjepa_fast.plan.agent import PlanningAgent
from hjepa_fast.plan.diagnose import diagnose, format_diagnosis, spearman
from hjepa_fast.plan.distance import DistanceHead, fit_head
from hjepa_fast.plan.energy import LatentEnergy, LearnedEnergy, latent_cost
from hjepa_fast.plan.planners import CEM

FREQUENCIES = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 40
PHASES = torch.rand(32, generator=torch.Generator().manual_seed(2)) * 6.3


def features(x: torch.Tensor) -> torch.Tensor:
    """A fixed random nonlinear map of a position in [0, 1] ``[...]`` -> ``[..., 32]``: high-frequency
    sines, so distances between features say little about distances between positions beyond ~0.05."""
    return torch.sin(x[..., None] * FREQUENCIES + PHASES)


def walks(episodes: int, steps: int, seed: int) -> torch.Tensor:
    """Random walks of a point on [0, 1] (reflected at the ends): ``[episodes, steps]`` positions."""
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(episodes, 1, generator=g)
    x = torch.cat([start, start + ((torch.rand(episodes, steps - 1, generator=g) * 2 - 1) * 0.1).cumsum(1)], 1)
    x = x.abs()
    return torch.where(x > 1, 2 - x, x)


def test_a_head_fitted_on_trajectories_ranks_states_by_true_distance():
    torch.set_num_threads(1)  # a small MLP: one thread is faster than two, and never thrashes a busy machine
    train, test = walks(64, 32, seed=0), walks(16, 32, seed=1).flatten()
    head = fit_head(features(train), features(train), steps=600, batch=128)
    g = torch.Generator().manual_seed(3)
    a, b = (test[torch.randint(len(test), (400,), generator=g)] for _ in range(2))  # pairs across episodes too
    true = (a - b).abs().numpy()
    assert spearman(head(features(a), features(b)).numpy(), true) > 0.65  # 0.72 to 0.82 over fit seeds
    for seed in range(3):  # the features alone, or an untrained head, do not rank
        torch.manual_seed(seed)
        assert spearman(DistanceHead(32)(features(a), features(b)).detach().numpy(), true) < 0.5
    assert spearman((features(a) - features(b)).norm(dim=-1).numpy(), true) < 0.5


def test_fit_head_refuses_mismatched_or_too_few_trajectories():
    with pytest.raises(ValueError, match="goals must have the states' shape"):
        fit_head(torch.zeros(3, 4, 5), torch.zeros(3, 4, 6))
    with pytest.raises(ValueError, match="need >= 2 trajectories"):
        fit_head(torch.zeros(1, 4, 5), torch.zeros(1, 4, 5))


def _heads(world) -> list[DistanceHead]:
    """Untrained heads, one per level, sized for the world model's tokens."""
    wm, env = world
    torch.manual_seed(0)
    return [DistanceHead(wm.hw * t.shape[-1]) for t in wm.observe([env.reset(0)], []).targets]


def test_learned_energy_scores_steps_as_their_mean_distance():
    heads = [DistanceHead(4 * 6, hidden=8, dim=3)]
    energy, tokens, goal = LearnedEnergy(heads), torch.randn(5, 3, 4, 6), torch.randn(4, 6)
    per_step = torch.stack([energy(0, tokens[:, s], goal) for s in range(3)], 1)
    torch.testing.assert_close(energy(0, tokens, goal), per_step.mean(1))
    torch.testing.assert_close(energy(0, tokens[:, 0], goal), heads[0](tokens[:, 0].flatten(-2), goal.flatten()))
    torch.testing.assert_close(LatentEnergy()(0, tokens, goal), latent_cost(tokens, goal))


@pytest.mark.parametrize("levels", [1, 2])
def test_the_planners_choice_follows_the_energy(world, levels):
    """A mutation check: the same agent, seed and episode choose another action under a learned energy, which
    is called at the right levels (flat: level 1; 2 levels: level 2 for the goal and for the subgoal) and
    whose FLOPs the agent counts."""
    wm, env = world
    frames = [env.reset(0)]

    def act(energy):
        agent = PlanningAgent(wm, CEM(samples=16, iterations=2, elites=4), levels, energy=energy)
        agent.reset(env.goal_observation())
        before = wm.flops
        action = agent.act(frames, [], torch.Generator().manual_seed(0))
        return action, wm.flops - before

    called = []

    class Spy(LearnedEnergy):
        def __call__(self, level, tokens, goal):
            called.append(level)
            return super().__call__(level, tokens, goal)

    latent, latent_flops = act(None)
    learned, learned_flops = act(Spy(_heads(world)))
    assert not np.allclose(latent, learned)
    assert set(called) == ({0} if levels == 1 else {1})
    assert learned_flops > latent_flops


def test_diagnosis_reports_both_energies_per_level(world):
    wm, env = world
    result = diagnose(wm, env, tasks=2, candidates=6, learned=LearnedEnergy(_heads(world)))
    for level in result["levels"]:
        assert -1.0 <= level["learned_corr_true"] <= 1.0 and -1.0 <= level["learned_corr_predicted"] <= 1.0
        assert -1.0 <= level["rank_corr_true"] <= 1.0
    assert "learned pred." in format_diagnosis(result)
    plain = diagnose(wm, env, tasks=2, candidates=6)
    assert "learned_corr_true" not in plain and "learned" not in format_diagnosis(plain)
    assert plain["rank_corr_true"] == pytest.approx(result["rank_corr_true"])  # the latent numbers unchanged
