"""Planning with an H-JEPA: one batched forward per planner iteration, hierarchical planning with one
level is flat planning, a 2-level agent plans valid actions, and FLOPs are counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hjepa_fast.envs import make_env
from hjepa_fast.plan.agent import OracleAgent, PlanningAgent, RandomAgent
from hjepa_fast.plan.diagnose import diagnose
from hjepa_fast.plan.energy import latent_cost
from hjepa_fast.plan.evaluate import TASK_SEED, act_flops, matched_samples, run_episode
from hjepa_fast.plan.planners import CEM
from hjepa_fast.plan.world_model import PlanningModel
from hjepa_fast.train.builders import build_model


def test_one_level_hierarchy_is_flat_planning(world):
    wm, env = world
    frames = [env.reset(0)]
    agent = PlanningAgent(wm, CEM(samples=16, iterations=2, elites=4), levels=1)
    agent.reset(env.goal_observation())
    action = agent.act(frames, [], torch.Generator().manual_seed(3))
    # flat planning written out: level 1's predicted last step against the goal's level-1 embedding
    state, goal = wm.observe(frames, []), wm.goal(env.goal_observation())

    def cost(future):
        pred = wm.predict(state, 0, future, range(wm.steps[0] - 1, wm.steps[0]))[:, 0]
        return (pred - goal[0]).abs().mean((1, 2))

    with torch.no_grad():
        flat = CEM(samples=16, iterations=2, elites=4).plan(cost, wm.horizon, 2, torch.Generator().manual_seed(3))
    assert np.allclose(action, flat.actions[0].numpy())


def test_oracle_scores_each_candidate_by_its_real_outcome(world):
    """The oracle's energy of a candidate is the energy of the clip the environment really shows after
    the episode so far and that candidate, computed here by stepping the episode's own environment."""
    wm, env = world
    replayed = make_env("panworld", view=16, world=48, goal_range=(4.0, 12.0))
    frames, actions = [env.reset(5)], []
    for a in ([0.5, -0.2], [1.0, 1.0]):
        actions.append(np.array(a))
        frames.append(env.step(actions[-1]))
    agent = OracleAgent(wm, CEM(samples=4, iterations=1), replayed, energy_frames=2)
    with pytest.raises(ValueError, match="task's seed"):
        agent.reset(env.goal_observation())
    agent.reset(env.goal_observation(), 5)
    agent.episode = (frames, actions)
    future = torch.rand(3, wm.horizon, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    first = wm.context_steps[0]
    with torch.no_grad():
        costs = agent._cost(wm.observe(frames, actions), 0, first, wm.horizon, torch.zeros(wm.horizon, 2), None)(future)
        for candidate, cost in zip(future, costs):
            env.reset(5)
            for a in actions:
                env.step(a)
            clip = np.stack(wm.history_frames(frames) + [env.step(a) for a in candidate.double().numpy()])
            real = wm.model.encode_targets(torch.from_numpy(clip)[None])[0].view(wm.steps[0], wm.hw, -1)
            assert float(cost) == pytest.approx(float((real[first + 1] - agent.goal[0]).abs().mean()), rel=1e-5)


def test_oracle_acts_without_the_world_models_encoding_and_counts_only_its_replays(world, monkeypatch):
    """The oracle scores real outcomes: it never encodes the episode with the world model, and its FLOPs are
    one target encoding of each candidate's replayed clip."""
    wm, env = world
    monkeypatch.setattr(wm, "observe", lambda *a: pytest.fail("the oracle encoded the episode"))
    agent = OracleAgent(wm, CEM(samples=4, iterations=2, elites=2), make_env("panworld", view=16, world=48,
                                                                          goal_range=(4.0, 12.0)))
    agent.reset(env.goal_observation(), 2)
    wm.flops = 0
    action = agent.act([env.reset(2)], [], torch.Generator().manual_seed(0))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)
    assert wm.flops == 4 * 2 * wm.encode_flops(online=False)


def test_every_candidate_in_one_batched_forward(world, monkeypatch):
    wm, env = world
    calls = []
    original = wm.model.predict_level
    monkeypatch.setattr(wm.model, "predict_level", lambda *a, **k: calls.append(a[1][0].shape[0]) or original(*a, **k))
    agent = PlanningAgent(wm, CEM(samples=16, iterations=3, elites=4), levels=2)
    agent.reset(env.goal_observation())
    agent.act([env.reset(1)], [], torch.Generator().manual_seed(0))
    # top level: 3 iterations x 16, its subgoal (1), level 1: 3 iterations x 16
    assert calls == [16, 16, 16, 1, 16, 16, 16]


@pytest.mark.parametrize("planner", ["cem", "mppi", "grad"])
def test_hierarchical_agent_plans_valid_actions_and_counts_flops(world, planner):
    from hjepa_fast.plan.planners import build_planner

    wm, env = world
    frames, actions = [env.reset(2)], []
    agent = PlanningAgent(wm, build_planner(planner, 16, 2), levels=2)
    agent.reset(env.goal_observation())
    before = wm.flops
    for _ in range(2):
        actions.append(agent.act(frames, actions, torch.Generator().manual_seed(0)))
        frames.append(env.step(actions[-1]))
    assert all(a.shape == (2,) and np.abs(a).max() <= 1.0 for a in actions)
    assert wm.flops > before


def test_predictions_change_with_the_actions(world):
    wm, env = world
    state = wm.observe([env.reset(0)], [])
    future = torch.zeros(1, wm.horizon, 2, requires_grad=True)
    for level in range(2):
        with torch.enable_grad():
            pred = wm.predict(state, level, future, range(wm.context_steps[level], wm.steps[level]))
            (grad,) = torch.autograd.grad(pred.pow(2).sum(), future)
        assert grad.abs().max() > 0, f"level {level + 1} ignores the planned actions"


def test_levels_beyond_the_model_are_refused(world):
    with pytest.raises(ValueError, match=r"levels must be in \[1, 2\]"):
        PlanningAgent(world[0], CEM(), levels=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("planner", ["cem", "mppi", "grad"])
def test_agent_plans_on_the_models_device(world, planner):
    """A model on CUDA: the whole planning path runs there (no device mismatch), the action comes back as
    a CPU array in range, and the analytic FLOPs match the CPU model's (same sequence of calls)."""
    import copy

    from hjepa_fast.plan.planners import build_planner

    wm, env = world
    gpu = PlanningModel(copy.deepcopy(wm.model).cuda(), wm.cfg)
    assert gpu.device.type == "cuda" and all(mk.context.is_cuda for mk in gpu.masks)
    flops = []
    for model in (wm, gpu):
        agent = PlanningAgent(model, build_planner(planner, 16, 2), levels=2)
        agent.reset(env.goal_observation())
        before = model.flops
        action = agent.act([env.reset(4)], [], torch.Generator().manual_seed(0))
        flops.append(model.flops - before)
        assert isinstance(action, np.ndarray) and action.shape == (2,) and np.abs(action).max() <= 1.0
    assert flops[0] == flops[1]


def test_hierarchical_candidates_matched_to_a_flat_budget(world):
    wm, env = world

    def agent(samples, levels):
        return PlanningAgent(wm, CEM(samples=samples, iterations=1), levels)

    flat = act_flops(wm, env, lambda n: agent(n, 1), 16)
    assert act_flops(wm, env, lambda n: agent(n, 2), 16) > 1.5 * flat  # the hierarchy costs more per candidate
    matched = matched_samples(wm, env, lambda n: agent(n, 2), flat, 16)
    assert 2 <= matched < 16
    assert act_flops(wm, env, lambda n: agent(n, 2), matched) == pytest.approx(flat, rel=0.1)


def test_diagnosis_sees_a_predictor_that_ignores_the_actions(world, monkeypatch):
    wm, env = world
    live = diagnose(wm, env, tasks=2, candidates=6)
    assert live["action_sensitivity"] > 0.01 and len(live["tasks"]) == 2
    assert all(-1.0 <= r["rank_corr_true"] <= 1.0 for r in live["tasks"])
    actions_ignored = wm.model.predict_level

    def blind(level, context, masks, actions=None, target=None, above_prediction=None):
        return actions_ignored(level, context, masks, torch.zeros_like(actions), target, above_prediction)

    monkeypatch.setattr(wm.model, "predict_level", blind)
    dead = diagnose(wm, env, tasks=2, candidates=6)
    assert dead["action_sensitivity"] < 1e-6
    assert len(dead["levels"]) == 2 and dead["levels"][1]["action_sensitivity"] < 1e-6
    assert live["levels"][1]["action_sensitivity"] > 0.01 and live["levels"][0] == {
        k: live[k] for k in live["levels"][0]}  # level 1's numbers are also the top-level ones
    assert dead["rank_corr_true"] == pytest.approx(live["rank_corr_true"])  # the real outcomes did not change


def test_energy_compares_the_step_the_given_frames_ahead(world, monkeypatch):
    wm, env = world  # level 1: 8 steps, sees 4; level 2: 2 steps of 4 frames, sees 1
    assert PlanningAgent(wm, CEM(), 1)._energy_step(0) == 7  # default: the last imagined step
    assert [PlanningAgent(wm, CEM(), 1, k)._energy_step(0) for k in (1, 3, 4)] == [4, 6, 7]
    assert [PlanningAgent(wm, CEM(), 2, k)._energy_step(1) for k in (1, 4)] == [1, 1]  # rounded up, clipped
    asked = []
    real_predict = wm.predict

    def record(state, level, future, steps):
        asked.append((level, steps))
        return real_predict(state, level, future, steps)

    monkeypatch.setattr(wm, "predict", record)
    agent = PlanningAgent(wm, CEM(samples=4, iterations=1, elites=2), 1, energy_frames=2)
    agent.reset(env.goal_observation())
    agent.act([env.reset(0)], [], torch.Generator().manual_seed(0))
    assert asked == [(0, range(5, 6))]
    asked.clear()
    path_agent = PlanningAgent(wm, CEM(samples=4, iterations=1, elites=2), 1, energy_frames=2, energy_path=True)
    path_agent.reset(env.goal_observation())
    path_agent.act([env.reset(0)], [], torch.Generator().manual_seed(0))
    assert asked == [(0, range(4, 6))]  # every imagined step from the first future one up to 2 frames ahead
    for bad in (0, wm.horizon + 1):
        with pytest.raises(ValueError, match="energy_frames must be in"):
            PlanningAgent(wm, CEM(), 1, bad)


def test_path_energy_is_the_mean_of_the_step_energies():
    pred, goal = torch.randn(5, 3, 4, 6), torch.randn(4, 6)
    per_step = torch.stack([latent_cost(pred[:, s], goal) for s in range(3)], 1)
    torch.testing.assert_close(latent_cost(pred, goal), per_step.mean(1))


@pytest.mark.parametrize("overrides", [[], ["loss.rollout_steps=[3,0]", "model.topdown_source=prediction"]],
                         ids=["one-pass", "rollout-predicted-topdown"])
def test_a_prediction_counts_the_flops_it_runs(make_plan_config, overrides):
    """The planner's analytic count of one batched prediction equals FlopCounterMode's, also when level 1
    rolls out and reads level 2's prediction (which it then computes too)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = make_plan_config(*overrides)
    wm = PlanningModel(build_model(cfg), cfg)
    env = make_env("panworld", view=16, world=48, goal_range=(4.0, 12.0))
    state = wm.observe([env.reset(0)], [])
    future = torch.zeros(3, wm.horizon, 2)
    wm.flops = 0
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        pred = wm.predict(state, 0, future, range(wm.context_steps[0], wm.steps[0]))
    assert pred.shape[:2] == (3, wm.steps[0] - wm.context_steps[0])
    assert wm.flops == counter.get_total_flops()


def test_a_hierarchical_agent_with_a_perfect_model_beats_random_on_far_goals(make_plan_config):
    """The environment as the model at both levels (``OracleAgent``, levels=2) and an encoder that reads the
    agent's position off the frame (so the latent energy is the L1 distance to the goal): on tworooms tasks
    whose goal is far (>= 0.7, the farthest bucket, in the other room), the hierarchy's subgoals carry it to
    goals that random actions never reach."""
    torch.set_num_threads(1)
    cfg = make_plan_config("data.frames=16", "masks.context_fraction=[0.25,0.25]")  # level 2 plans 3 steps of 4
    wm = PlanningModel(build_model(cfg), cfg)

    def positions(clips):  # [B, F, 3, H, W] uint8 -> each level's tokens [B, T_l * hw, 2]: the agent's (x, y)
        agent = ((clips[:, :, 0] == 255) & (clips[:, :, 1] == 60)).float()
        grid = (torch.arange(clips.shape[-1]) + 0.5) / clips.shape[-1]
        n = agent.sum((-1, -2))
        xy = torch.stack([(agent * grid).sum((-1, -2)) / n, (agent * grid[:, None]).sum((-1, -2)) / n], -1)
        B, F = xy.shape[:2]
        return [xy[:, span - 1::span, None].expand(-1, -1, wm.hw, -1).reshape(B, F // span * wm.hw, 2)
                for span in wm.span]

    wm.model.encode_targets = positions
    env = make_env("tworooms", view=16)
    far = [t for t in range(40) if (env.reset(TASK_SEED + t), env.goal_distance())[1] >= 0.7][:4]
    hierarchical = OracleAgent(wm, CEM(samples=8, iterations=2, elites=4), make_env("tworooms", view=16),
                               energy_frames=4, levels=2)
    success = {name: np.mean([run_episode(env, agent, t, 0)["success"] for t in far])
               for name, agent in (("random", RandomAgent(2)), ("oracle hier-2", hierarchical))}
    assert len(far) == 4 and success["random"] == 0.0 and success["oracle hier-2"] >= 0.5, success
