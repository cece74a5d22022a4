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


def test_accumulated_actions_reach_every_later_step_and_no_earlier_one(make_config):
    """``model.action_accumulate``: a change of the action at step s adds its summed-path embedding to
    the tokens of every step after s, exactly, and leaves steps up to s alone (causal)."""
    cfg = make_config("model.action_dim=2", "model.action_accumulate=true", "masks.strategies=[future,future,future]")
    model = build_model(cfg).eval()
    predictor = model.predictors[0]
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (1, 16, 1, 24, 24), dtype=torch.uint8, generator=g)
    masks = build_mask_sampler(cfg).sample(1, g)
    context = model.encode_context(clips, masks)
    actions = torch.randn(1, 16, 2, generator=g)
    changed, s = actions.clone(), 3  # level-1 step s covers frames 2s, 2s + 1 (tubelet 2)
    changed[0, 2 * s:2 * s + 2] += torch.tensor([0.7, -0.4])
    seen = []
    hook = predictor.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model.predict_level(0, context, masks, actions)
        model.predict_level(0, context, masks, changed)
    hook.remove()
    n_tokens = masks[0].context.shape[1] + masks[0].target.shape[1]
    before, after = (x[0, -n_tokens:] for x in seen)
    times = torch.cat([masks[0].context[0], masks[0].target[0]]) // predictor.tokens_per_step
    old, new = model.level_actions(actions, 0)[0, s], model.level_actions(changed, 0)[0, s]
    with torch.no_grad():
        summed = predictor.action_sum_embed(new - old)
        direct = predictor.action_embed(new) - predictor.action_embed(old)
    assert torch.equal(after[times <= s], before[times <= s])
    for step, expected in ((times == s + 1, summed + direct), (times > s + 1, summed)):
        assert step.any()
        torch.testing.assert_close(after[step] - before[step], expected.expand(int(step.sum()), -1),
                                   atol=1e-5, rtol=1e-4)
