"""MultiLevelEMA with the linear schedule is I-JEPA's momentum loop on a timm ViT-S, to rounding."""
import copy

import timm
import torch

from hjepa_fast.kernels import EMASchedule, MultiLevelEMA


def test_linear_ema_equals_the_ijepa_loop_on_a_timm_vit_small():
    torch.manual_seed(0)
    encoder = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    target = copy.deepcopy(encoder).requires_grad_(False)
    peer_target = copy.deepcopy(target)
    ipe, epochs, ipe_scale, ema_range = 3, 2, 1.25, (0.996, 1.0)
    total = int(ipe * epochs * ipe_scale)  # I-JEPA's momentum_scheduler length - 1
    momentum = (ema_range[0] + i * (ema_range[1] - ema_range[0]) / total for i in range(total + 1))
    ema = MultiLevelEMA([target], [encoder], EMASchedule([ema_range[0]], [ema_range[1]], total, "linear"))
    with torch.no_grad():
        for p in target.parameters():  # targets that start apart from the online weights: a real update
            p.add_(torch.randn_like(p) * 0.05)
        for p, q in zip(target.parameters(), peer_target.parameters()):
            q.copy_(p)
        before = [p.clone() for p in target.parameters()]
        for _ in range(ipe * epochs):
            for p in encoder.parameters():  # what an optimiser step would do
                p.add_(torch.randn_like(p) * 1e-2)
            ema.step()
            m = next(momentum)
            for q, k in zip(encoder.parameters(), peer_target.parameters()):
                k.data.mul_(m).add_((1.0 - m) * q.detach().data)
    for (name, ours), peer, old in zip(target.named_parameters(), peer_target.parameters(), before):
        torch.testing.assert_close(ours, peer, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(ours, old), name  # every tensor moved toward the online one
    assert ema.step_count == ipe * epochs
