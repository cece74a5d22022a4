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


def test_actions_move_an_untrained_predictors_output(make_config):
    """Through attention alone, with ViT's small init, actions moved predictions by ~1e-5 of their scale,
    and trained predictors kept ignoring them; the direct path makes the effect first-order from the start."""
    cfg = make_config("model.action_dim=2", "masks.strategies=[future,future,future]")
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (1, 16, 1, 24, 24), dtype=torch.uint8, generator=g)
    masks = build_mask_sampler(cfg).sample(1, g)
    context = [c.expand(32, -1, -1) for c in model.encode_context(clips, masks)]
    masks = [type(m)(m.context.expand(32, -1), m.target.expand(32, -1)) for m in masks]
    actions = torch.rand(32, 16, 2, generator=g) * 2 - 1  # 32 candidate action sequences, one context
    with torch.no_grad():
        pred = torch.nn.functional.normalize(model.predict_level(0, context, masks, actions), dim=-1)
    assert pred.std(dim=0).mean() > 1e-3
