"""Levels above 1 read a learned encoding of their window's chunk of actions (a macro-action), not an
average: the order of the actions inside a chunk reaches the prediction."""
from __future__ import annotations

import torch

from hjepa_fast.model.predictor import MacroActionEncoder
from hjepa_fast.train.builders import build_mask_sampler, build_model


def test_upper_levels_see_the_order_inside_a_chunk(make_config):
    cfg = make_config("model.action_dim=2")
    model = build_model(cfg)
    assert isinstance(model.predictors[1].action_embed, MacroActionEncoder)
    assert isinstance(model.predictors[0].action_embed, torch.nn.Linear)
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (1, 16, 1, 24, 24), dtype=torch.uint8, generator=g)
    masks = build_mask_sampler(cfg).sample(1, g)
    context = model.encode_context(clips, masks)
    actions = torch.randn(1, 16, 2, generator=g)
    swapped = actions.clone()
    swapped[:, [0, 1]] = actions[:, [1, 0]]  # same chunk of level 2 (4 frames), same mean
    with torch.no_grad():
        a = model.predict_level(1, context, masks, actions)
        b = model.predict_level(1, context, masks, swapped)
    assert not torch.allclose(a, b)
    assert model.level_actions(actions, 1).shape == (1, 4, 8)
