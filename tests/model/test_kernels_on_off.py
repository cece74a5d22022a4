"""A model with kernels on (Triton, under the interpreter on CPU) and off (the PyTorch references) gives
the same losses, gradients and EMA update."""
from __future__ import annotations

import copy

import pytest
import torch

from hjepa_fast.kernels import kernel_mode
from hjepa_fast.train.builders import build_mask_sampler, build_model
from hjepa_fast.train.ema import TargetEMA


def step(model, clips, masks, mode: str):
    """One forward/backward and EMA update under ``mode``; returns (level losses, grads, targets)."""
    with kernel_mode(mode):
        out = model(clips, masks)
        out.loss.backward()
        targets, sources = model.ema_pairs()
        TargetEMA(targets, sources, [0.9] * 3, [0.99] * 3, total_steps=10).update(0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.stack(out.level_losses), grads, [p.detach().clone() for p in model.target_encoders.parameters()]


@pytest.mark.parametrize("abstraction", ["attention", "average"])
def test_kernels_on_and_off_agree(make_config, abstraction):
    cfg = make_config(f"model.abstraction={abstraction}")
    model = build_model(cfg)
    with torch.no_grad():  # targets differ from the online encoders, so the EMA does something
        for p in model.target_encoders.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (2, cfg.data.frames, 1, cfg.model.img_size, cfg.model.img_size),
                          dtype=torch.uint8, generator=g)
    masks = build_mask_sampler(cfg).sample(2, g)
    reference = step(copy.deepcopy(model), clips, masks, "reference")
    triton = step(copy.deepcopy(model), clips, masks, "triton")
    torch.testing.assert_close(triton[0], reference[0], rtol=1e-5, atol=1e-6)
    assert triton[1].keys() == reference[1].keys()
    for name, grad in reference[1].items():
        torch.testing.assert_close(triton[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for a, b in zip(triton[2], reference[2]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # weights rounded to fp32 on one path: 1 ulp
