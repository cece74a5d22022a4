"""The planning tests' world: a tiny untrained 2-level action-conditioned model and a small panworld."""
from __future__ import annotations

import pytest

from hjepa_fast.builders import build_model
from hjepa_fast.envs import make_env
from hjepa_fast.plan.world_model import PlanningModel

# 8 frames of 16x16 RGB; level 1: 8 steps, sees 4; level 2: 2 steps of 4 frames, sees 1
PLAN = ["model.levels=2", "model.img_size=16", "model.in_chans=3", "model.tubelet=1", "model.temporal_strides=[1,4]",
        "model.action_dim=2", "data.frames=8", "masks.strategies=[future,future]",
        "masks.context_fraction=[0.5,0.5]"]


@pytest.fixture
def make_plan_config(make_config):
    """``make_plan_config(*overrides) -> Config``: the planning model's config with overrides applied."""
    return lambda *overrides: make_config(*PLAN, *overrides)


@pytest.fixture
def world(make_plan_config):
    cfg = make_plan_config()
    env = make_env("panworld", view=16, world=48, goal_range=(4.0, 12.0))
    return PlanningModel(build_model(cfg), cfg), env
