"""No prediction may see the inputs it is scored on: the gradient of every level's predictions with
respect to the pixels under that level's targets is exactly zero, for every mask strategy and every
top-down mode."""
from __future__ import annotations

import math

import pytest
import torch

from hjepa_fast.masks import LevelMasks
from hjepa_fast.train.builders import build_mask_sampler, build_model

# every strategy at every level, in mixes that keep some input visible on this grid
STRATEGY_MIXES = [
    "[multiblock,multiblock,multiblock]",
    "[multiblock,future,future]",
    "[future,future,future]",
    "[segment,multiblock,multiblock]",
    "[multiblock,segment,multiblock]",
    "[multiblock,multiblock,segment]",
]


def footprint_pixels(cfg, level: int, target: torch.Tensor) -> torch.Tensor:
    """Boolean ``[frames, H, W]``: the pixels covered by level ``level``'s target tokens ``[Nt]``."""
    m = cfg.model
    side = m.img_size // m.patch_size
    stride = math.prod(m.temporal_strides[: level + 1]) * m.tubelet  # frames per level-l step
    out = torch.zeros(cfg.data.frames, m.img_size, m.img_size, dtype=torch.bool)
    for idx in target.tolist():
        t, n = divmod(idx, side * side)
        r, c = divmod(n, side)
        p = m.patch_size
        out[t * stride:(t + 1) * stride, r * p:(r + 1) * p, c * p:(c + 1) * p] = True
    return out


def prediction_gradients(model, clips, masks, level: int, sample: int) -> torch.Tensor:
    """d(sum of the level's predictions of one sample) / d(clips[sample]) as ``[frames, H, W]``."""
    preds = model.predict(model.encode_context(clips, masks), masks)
    (grad,) = torch.autograd.grad(preds[level][sample].sum(), clips)
    return grad[sample].abs().sum(dim=1)  # sum over channels


@pytest.mark.parametrize("source", ["context", "prediction"])
@pytest.mark.parametrize("topdown", ["cross", "film", "prepend"])
@pytest.mark.parametrize("strategies", STRATEGY_MIXES)
def test_predictions_have_zero_gradient_on_their_targets(make_config, strategies, topdown, source):
    cfg = make_config(f"masks.strategies={strategies}", f"model.topdown={topdown}", "masks.num_blocks=1",
                      f"model.topdown_source={source}")
    model = build_model(cfg)
    masks = build_mask_sampler(cfg).sample(2, torch.Generator().manual_seed(0))
    clips = torch.randn(2, cfg.data.frames, 1, cfg.model.img_size, cfg.model.img_size, requires_grad=True)
    for level in range(cfg.model.levels):
        for sample in range(2):
            grad = prediction_gradients(model, clips, masks, level, sample)
            held_out = footprint_pixels(cfg, level, masks[level].target[sample])
            assert held_out.any()
            assert grad[held_out].max() == 0, f"level {level + 1} sees its own targets"
            assert grad[~held_out].max() > 0, "predictions depend on nothing: the check would be vacuous"


def assert_no_level_sees_its_targets(cfg) -> None:
    """Sample 0 of a batch of 2: every level's predictions have zero gradient under its targets and a
    nonzero one elsewhere."""
    model = build_model(cfg)
    masks = build_mask_sampler(cfg).sample(2, torch.Generator().manual_seed(0))
    clips = torch.randn(2, cfg.data.frames, 1, cfg.model.img_size, cfg.model.img_size, requires_grad=True)
    for level in range(cfg.model.levels):
        grad = prediction_gradients(model, clips, masks, level, 0)
        held_out = footprint_pixels(cfg, level, masks[level].target[0])
        assert grad[held_out].max() == 0 and grad[~held_out].max() > 0, f"level {level + 1}"


@pytest.mark.parametrize("source", ["context", "prediction"])
def test_a_rollout_never_sees_its_targets(make_config, source):
    """A rollout feeds predictions back as context: they come from the context alone, so the targets of
    every level still get exactly zero gradient."""
    assert_no_level_sees_its_targets(make_config("masks.strategies=[future,future,future]",
                                                 "loss.rollout_steps=[4,2,0]", f"model.topdown_source={source}"))


@pytest.mark.parametrize("source", ["context", "prediction"])
@pytest.mark.parametrize("topdown", ["cross", "prepend"])
@pytest.mark.parametrize("strategies", STRATEGY_MIXES[:3])
def test_token_keys_never_see_their_targets(make_config, strategies, topdown, source):
    """One top-down key per coarse step and position: the same zero-gradient check."""
    assert_no_level_sees_its_targets(make_config(f"masks.strategies={strategies}", f"model.topdown={topdown}",
                                                 "masks.num_blocks=1", f"model.topdown_source={source}",
                                                 "model.topdown_keys=token"))


def test_the_check_catches_a_leak(make_config):
    """Put one level-1 target into the context: the same check must then find a nonzero gradient."""
    cfg = make_config("masks.strategies=[multiblock,multiblock,multiblock]", "masks.num_blocks=1")
    model = build_model(cfg)
    masks = build_mask_sampler(cfg).sample(2, torch.Generator().manual_seed(0))
    leaked = masks[0].target[:, :1]
    context = torch.cat([masks[0].context[:, 1:], leaked], dim=1).sort(dim=1).values
    masks[0] = LevelMasks(context, masks[0].target)
    clips = torch.randn(2, cfg.data.frames, 1, cfg.model.img_size, cfg.model.img_size, requires_grad=True)
    grad = prediction_gradients(model, clips, masks, 0, 0)
    assert grad[footprint_pixels(cfg, 0, masks[0].target[0])].max() > 0


def test_samples_do_not_see_each_other(make_config):
    cfg = make_config()
    model = build_model(cfg)
    masks = build_mask_sampler(cfg).sample(3, torch.Generator().manual_seed(1))
    clips = torch.randn(3, cfg.data.frames, 1, cfg.model.img_size, cfg.model.img_size, requires_grad=True)
    preds = model.predict(model.encode_context(clips, masks), masks)
    (grad,) = torch.autograd.grad(sum(p[0].sum() for p in preds), clips)
    assert grad[1:].abs().max() == 0 and grad[0].abs().max() > 0
