"""The speed switches of the training step compute what the plain path computes: cuDNN-first attention,
stochastic depth as a buffer, target encoders in eval mode."""
import pytest
import torch
import torch.nn.functional as F

from hjepa_fast.config import load_config
from hjepa_fast.model.attention import attention, resolve_backend
from hjepa_fast.model.transformer import StochasticDepth
from hjepa_fast.train.builders import build_model


def _qkv(device="cpu", dtype=torch.float32, L=37):
    g = torch.Generator(device=device).manual_seed(1)
    return [torch.randn(3, 4, L, 16, generator=g, device=device).to(dtype) for _ in range(3)]


def test_cudnn_backend_is_sdpa_everywhere_it_cannot_run():
    q, k, v = _qkv()
    assert resolve_backend("cudnn") == "cudnn"
    torch.testing.assert_close(attention(q, k, v, backend="cudnn"), F.scaled_dot_product_attention(q, k, v))
    mask = torch.rand(3, 1, 37, 37) > 0.3
    mask[..., 0] = True
    torch.testing.assert_close(attention(q, k, v, mask, backend="cudnn"),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("cudnn2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cudnn_attention_matches_float64_reference_on_cuda():
    q, k, v = _qkv("cuda", torch.bfloat16, L=197)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out = attention(q, k, v, backend="cudnn")
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert (out.double() - ref).norm() / ref.norm() < 1e-2
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        assert (got.double() - want).norm() / want.norm() < 3e-2


def test_stochastic_depth_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.randn(4000, 5, 3)
    layer = StochasticDepth(0.25).train()
    y = layer(x)
    kept = (y != 0).flatten(1).all(1)
    assert ((y == 0).flatten(1).all(1) | kept).all()  # a sample is dropped whole or kept whole
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(StochasticDepth(0.0).train()(x), x)


def test_target_encoders_stay_in_eval_mode():
    model = build_model(load_config("configs/tiny_cpu.yaml", ["model.drop_path=0.3"])).train()
    assert model.encoders.training and model.predictors.training
    assert not any(m.training for m in model.target_encoders.modules())
    clips = torch.randint(0, 256, (2, model.frames, 1, 32, 32), dtype=torch.uint8)
    first, second = model.encode_targets(clips), model.encode_targets(clips)
    for a, b in zip(first, second):  # deterministic: no stochastic depth in the targets
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape,tubelet,patch", [((2, 6, 3, 20, 12), 2, 4), ((1, 3, 1, 15, 10), 3, 5)])
def test_patch_embedding_equals_the_strided_convolution(shape, tubelet, patch):
    from hjepa_fast.model.encoder import PatchEmbed3D

    embed = PatchEmbed3D(shape[2], 7, patch, tubelet).double()
    clips = torch.randn(shape, dtype=torch.float64)
    want = embed.proj(clips.transpose(1, 2)).flatten(3).permute(0, 2, 3, 1)  # [B, T', H'W', D]
    torch.testing.assert_close(embed(clips), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_pins_the_masks():
    from hjepa_fast.masks import LevelMasks

    batch = {"masks": [LevelMasks(torch.arange(6).view(2, 3), torch.arange(4).view(2, 2))]}
    pinned = torch.utils.data._utils.pin_memory.pin_memory(batch)
    assert all(m.context.is_pinned() and m.target.is_pinned() for m in pinned["masks"])
    assert torch.equal(pinned["masks"][0].context, batch["masks"][0].context)
