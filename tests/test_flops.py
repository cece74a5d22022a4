"""The analytic FLOP count (hjepa_fast.flops) against a hand count and against torch's FlopCounterMode."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hjepa_fast.config import load_config
from hjepa_fast.flops import encoder_forward, mask_token_counts, peak_bf16_flops, step_flops
from hjepa_fast.train.builders import build_mask_sampler, build_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Counting needs no speed; on a busy 2-core machine two OpenMP threads stall a tiny step for seconds."""
    torch.set_num_threads(1)


def test_hand_count_one_level():
    # 16 px / patch 8 -> 2x2 tokens, 4 frames / tubelet 2 -> 2 steps: N = 8 tokens; D = 8, F = 32; P = 4, F = 16
    cfg = load_config(None, ["model.levels=1", "model.img_size=16", "model.patch_size=8", "model.in_chans=1",
                             "data.frames=4", "model.encoder_dims=[8]", "model.encoder_depths=[1]",
                             "model.encoder_heads=[2]", "model.predictor_dims=[4]", "model.predictor_depths=[1]",
                             "model.predictor_heads=[2]", "masks.strategies=[multiblock]"])
    patch = 2 * 8 * (1 * 2 * 8 * 8) * 8  # 16384
    enc_ctx = 2 * 3 * 8 * 24 + 4 * 3 * 3 * 8 + 2 * 3 * 8 * 8 + 4 * 3 * 8 * 32  # 3 context tokens: 4896
    pred = 2 * 3 * 8 * 4 + 2 * 5 * 4 * 8 + (2 * 8 * 4 * 12 + 4 * 8 * 8 * 4 + 2 * 8 * 4 * 4 + 4 * 8 * 4 * 16)  # 4608
    enc_full = 2 * 8 * 8 * 24 + 4 * 8 * 8 * 8 + 2 * 8 * 8 * 8 + 4 * 8 * 8 * 32  # all 8 tokens: 14336
    f = step_flops(cfg, batch_size=2, context_tokens=[3], target_tokens=[5])
    assert f.online_forward == 2 * (patch + enc_ctx + pred)
    assert f.target_forward == 2 * (patch + enc_full)
    assert f.train_step == 2 * (3 * (patch + enc_ctx + pred) - patch + patch + enc_full) == 184_000


def test_vit_b_anchor():
    """ViT-B/16 on a 224 px image: ~17.5 GMAC forward (17.6 with class token and head)."""
    cfg = load_config(None, ["model.levels=1", "model.img_size=224", "model.patch_size=16", "model.in_chans=3",
                             "model.tubelet=1", "data.frames=1", "model.encoder_dims=[768]",
                             "model.encoder_depths=[12]", "model.encoder_heads=[12]", "masks.strategies=[multiblock]"])
    gmac = sum(encoder_forward(cfg, 0, kept=196)) / 2e9
    assert 17.3 < gmac < 17.6


@pytest.mark.parametrize("overrides", [
    [],
    ["model.abstraction=average", "model.topdown=none"],
    ["model.abstraction=conv", "model.topdown=film"],
    ["model.topdown=prepend", "model.action_dim=3"],
    ["masks.strategies=[future,future,future]", "loss.rollout_steps=[3,2,0]", "model.topdown_source=prediction",
     "model.action_dim=2"],
    ["model.topdown_keys=token"],
    ["model.topdown=prepend", "model.topdown_keys=token"],
], ids=["attention-cross", "average-none", "conv-film", "prepend-actions", "rollout-predicted-topdown",
        "cross-token-keys", "prepend-token-keys"])
def test_matches_flop_counter(make_config, overrides):
    """Forward and forward + backward equal FlopCounterMode's count of matmuls and convolutions; SDPA runs
    its math path, which the counter sees as matmuls (it does not count CPU SDPA kernels)."""
    cfg = make_config(*overrides)
    model = build_model(cfg)
    B = 2
    masks = build_mask_sampler(cfg).sample(B, torch.Generator().manual_seed(0))
    clips = torch.randint(0, 255, (B, cfg.data.frames, cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size),
                          dtype=torch.uint8)
    actions = torch.randn(B, cfg.data.frames, cfg.model.action_dim) if cfg.model.action_dim else None
    f = step_flops(cfg, B, *mask_token_counts(masks))
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            out = model(clips, masks, actions)
        with FlopCounterMode(display=False) as backward:
            out.loss.backward()
    assert forward.get_total_flops() == f.online_forward + f.target_forward
    assert forward.get_total_flops() + backward.get_total_flops() == f.train_step


def test_needs_one_count_per_level(make_config):
    with pytest.raises(ValueError, match="one context and one target count per level"):
        step_flops(make_config(), 1, [4, 4], [4, 4])


def test_peak_lookup():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("x86_64") is None
