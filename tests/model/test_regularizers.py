"""Anti-collapse terms against plain PyTorch references (value and gradient), and what they must and must
not penalise: a collapsed set and position-only tokens are penalised, an isotropic Gaussian is not."""
from __future__ import annotations

import math

import pytest
import torch

from hjepa_fast.config import ConfigError
from hjepa_fast.model.regularizers import (
    AntiCollapse,
    content_centre,
    random_directions,
    sigreg,
    subsample_rows,
    variance_covariance,
)
from hjepa_fast.train.builders import build_mask_sampler, build_model


def centre_reference(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per token: minus the mean of every token of the batch at the same position (a loop over positions)."""
    flat, pos = z.reshape(-1, z.shape[-1]), idx.reshape(-1)
    out = flat.clone()
    for p in pos.unique():
        rows = pos == p
        out[rows] = flat[rows] - flat[rows].mean(0)
    return out


def vc_reference(x: torch.Tensor, target_std: float = 1.0, eps: float = 1e-4):
    cov = torch.einsum("ni,nj->ij", x, x) / x.shape[0]
    std = torch.sqrt(x.pow(2).mean(0) + eps)
    variance = torch.clamp(target_std - std, min=0).mean()
    off_diagonal = cov * (1 - torch.eye(x.shape[1]))
    return variance, (off_diagonal ** 2).sum() / x.shape[1]


def sigreg_reference(x: torch.Tensor, directions: torch.Tensor, t_max: float = 3.0, points: int = 17):
    """The Epps-Pulley integral over the whole line [-t_max, t_max] with complex characteristic functions."""
    t = torch.linspace(-t_max, t_max, 2 * points - 1, dtype=torch.float64)
    y = (x.double() @ directions.double()).unsqueeze(-1)  # [n, M, 1]
    ecf = torch.exp(1j * t * y).mean(0)  # [M, P]
    gauss = torch.exp(-t ** 2 / 2)
    return torch.trapezoid((ecf - gauss).abs() ** 2 * gauss, t, dim=-1).mean()


def tokens(B=6, K=5, D=8, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, K, D, generator=g, dtype=torch.float64).requires_grad_()
    idx = torch.stack([torch.randperm(length, generator=g)[:K] for _ in range(B)])
    return z, idx


@pytest.mark.parametrize("seed", [0, 1])
def test_content_centre_matches_a_loop_over_positions_value_and_gradient(seed):
    z, idx = tokens(seed=seed)
    ours = content_centre(z, idx, 7)
    ref = centre_reference(z, idx)
    torch.testing.assert_close(ours, ref.float(), atol=1e-6, rtol=1e-5)
    weights = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad((ours * weights.float()).sum(), z)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), z)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(50, 8), (33, 13)])
def test_variance_covariance_matches_the_reference_value_and_gradient(shape):
    x = torch.randn(*shape, dtype=torch.float64) * torch.linspace(0.2, 2.0, shape[1], dtype=torch.float64)
    x = (x - x.mean(0)).requires_grad_()
    ours = variance_covariance(x)
    ref = vc_reference(x)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(torch.autograd.grad(a, x, retain_graph=True)[0],
                                   torch.autograd.grad(b, x, retain_graph=True)[0])


@pytest.mark.parametrize("shape", [(40, 8, 16), (25, 5, 3)])
def test_sigreg_matches_the_complex_characteristic_function_reference(shape):
    n, D, M = shape
    x = torch.randn(n, D, dtype=torch.float64).mul(1.7).add(0.3).requires_grad_()
    directions = random_directions(D, M, seed=3, device=x.device).double()
    ours, ref = sigreg(x, directions), sigreg_reference(x, directions)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0],
                               atol=1e-10, rtol=1e-7)


@pytest.mark.parametrize("scale", [1.0, 25.0])
def test_sigreg_in_float32_matches_the_float64_reference_on_wide_projections(scale):
    # the nodes are powers of exp(i h p): their rounding must stay at float32 level for large |p| too
    g = torch.Generator().manual_seed(int(scale))
    x = (torch.randn(300, 12, generator=g) * scale).requires_grad_()
    directions = random_directions(12, 40, seed=1, device=x.device)
    ours, ref = sigreg(x, directions), sigreg_reference(x, directions)
    torch.testing.assert_close(ours.double(), ref, atol=1e-6, rtol=1e-4)
    grad, ref_grad = torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0]
    torch.testing.assert_close(grad, ref_grad, atol=1e-5 * ref_grad.abs().max().item(), rtol=1e-3)


def test_collapsed_and_position_only_tokens_are_penalised_an_isotropic_set_is_not():
    g = torch.Generator().manual_seed(0)
    B, K, D = 64, 256, 16
    idx = torch.arange(K).expand(B, K)
    terms = AntiCollapse([1.0], [1.0], [0.0]), AntiCollapse([0.0], [0.0], [1.0])
    isotropic = torch.randn(B, K, D, generator=g)
    # every clip the same, each of 256 positions its own standard-normal code: no content at all
    position_only = torch.randn(1, K, D, generator=g).expand(B, K, D)
    constant = torch.ones(B, K, D)
    highs = []
    for term in terms:
        low = term(0, isotropic, idx, (1, 16, 16), step=0).item()
        for collapsed in (position_only, constant):
            highs.append(term(0, collapsed, idx, (1, 16, 16), step=0).item())
            assert highs[-1] > 0.3 and low < 0.05 * highs[-1], (low, highs[-1])
    # as a set of tokens the position codes look isotropic: terms on raw tokens would let them pass,
    # the centring per position is what exposes them
    raw = position_only.reshape(-1, D)
    raw = raw - raw.mean(0)
    raw_variance, raw_covariance = variance_covariance(raw)
    raw_sigreg = sigreg(raw, random_directions(D, 256, seed=0, device=raw.device))
    assert raw_variance + raw_covariance < 0.1 * highs[0] and raw_sigreg < 0.1 * highs[2]


def test_the_variance_hinge_stops_pushing_once_a_dimension_has_spread():
    x = torch.randn(4000, 4, generator=torch.Generator().manual_seed(1)) * torch.tensor([3.0, 3.0, 0.1, 0.1])
    x = (x - x.mean(0)).requires_grad_()
    variance, _ = variance_covariance(x)
    (grad,) = torch.autograd.grad(variance, x)
    assert grad[:, :2].abs().max() == 0 and grad[:, 2:].abs().max() > 0


def test_subsample_rows_is_a_function_of_the_seed():
    x = torch.arange(100.0).unsqueeze(1)
    a, b, c = subsample_rows(x, 10, 5), subsample_rows(x, 10, 5), subsample_rows(x, 10, 6)
    assert a.shape == (10, 1) and torch.equal(a, b) and not torch.equal(a, c)
    assert subsample_rows(x, 0, 5) is x and subsample_rows(x, 200, 5) is x


def test_the_model_adds_each_level_term_and_its_gradient_reaches_the_encoders(make_config):
    weights = "loss.variance_weight=[1,0,2]", "loss.covariance_weight=[0.1,0,0]", "loss.sigreg_weight=[0,0,1]"
    cfg_off, cfg_on = make_config(), make_config(*weights)
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (4, 16, 1, 24, 24), dtype=torch.uint8, generator=g)
    masks = build_mask_sampler(cfg_on).sample(4, g)
    off, on = build_model(cfg_off)(clips, masks), build_model(cfg_on)(clips, masks)
    torch.testing.assert_close(off.level_losses, on.level_losses)  # same init, same prediction losses
    assert [r.item() > 0 for r in on.level_regularizers] == [True, False, True]
    assert all(r.item() == 0 for r in off.level_regularizers)
    torch.testing.assert_close(on.loss, off.loss + sum(on.level_regularizers))
    model = build_model(make_config("loss.variance_weight=[1,1,1]"))
    model.predictors.requires_grad_(False)
    out = model(clips, masks)
    (out.loss - model.loss_weighting(list(out.level_losses), 0)).backward()  # the terms alone
    for level, encoder in enumerate(model.encoders):
        assert encoder.norm.weight.grad.abs().sum() > 0, f"level {level + 1} gets no anti-collapse gradient"


@pytest.mark.parametrize("prediction, kind", [("ijepa", "smooth_l1"), ("vjepa", "lp")])
def test_the_ijepa_and_vjepa_prediction_losses_are_the_kernels_references(make_config, prediction, kind):
    from hjepa_fast.kernels import masked_jepa_loss_reference

    model = build_model(make_config(f"loss.prediction={prediction}"))
    pred, target = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    idx = torch.tensor([[0, 2, 4, 6, 8], [1, 3, 5, 7, 0]])
    torch.testing.assert_close(model.prediction_loss(pred, target, idx),
                               masked_jepa_loss_reference(pred, target, idx, kind=kind, p=1.0))


def test_an_online_target_needs_a_term_at_every_level_and_copies_the_encoder(make_config):
    with pytest.raises(ConfigError, match=r"level\(s\) \[2, 3\]"):
        make_config("train.target_encoder=online", "loss.sigreg_weight=[1,0,0]")
    cfg = make_config("train.target_encoder=online", "loss.sigreg_weight=[1,0,0]", "loss.variance_weight=[0,1,1]")
    assert cfg.train.ema_tau_base == cfg.train.ema_tau_end == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="loss.sigreg_weight"):
        make_config("loss.sigreg_weight=[1,-1,0]")


def test_sigreg_of_a_collapsed_set_is_its_maximum_and_scale_free_in_batch():
    t = torch.linspace(0, 3, 17)
    gauss = torch.exp(-t * t / 2)
    collapsed_value = 2 * torch.trapezoid((1 - gauss) ** 2 * gauss, t)
    directions = random_directions(6, 32, seed=0, device=torch.device("cpu"))
    for n in (8, 512):
        torch.testing.assert_close(sigreg(torch.zeros(n, 6), directions), collapsed_value)
    assert math.isfinite(collapsed_value.item())
