"""The plain PyTorch ops behind hjepa_fast.kernels (the Triton kernels will be checked against them):
values against independent formulas, gradients, exact EMA ends, input checks."""
from __future__ import annotations

import math

import pytest
import torch
from hjepa_fast.kernels import (
    ema_update_,
    ema_update_reference_,
    masked_l2_loss,
    temporal_attention_pool,
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,M,N,D", [(2, 5, 9, 7), (3, 17, 40, 96), (1, 1, 1, 1)])
def test_masked_l2_loss_matches_the_formula(dtype, B, M, N, D):
    g = torch.Generator().manual_seed(B * 100 + D)
    pred = torch.randn(B, M, D, generator=g).to(dtype).requires_grad_()
    target = torch.randn(B, N, D, generator=g).to(dtype).requires_grad_()
    idx = torch.randint(0, N, (B, M), generator=g)  # repeats allowed
    loss = masked_l2_loss(pred, target, idx)
    expected = 0.0
    for b in range(B):
        for m in range(M):
            p, t = pred[b, m].double(), target[b, idx[b, m]].double()
            expected += ((p / p.norm() - t / t.norm()) ** 2).sum().item()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected / (B * M), rel=TOL[dtype], abs=TOL[dtype])
    loss.backward()
    assert target.grad is None and pred.grad is not None and pred.grad.shape == pred.shape


def test_masked_l2_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 4, 5, dtype=torch.float64)
    idx = torch.tensor([1, 3, 3])  # [M] shared by the batch
    assert torch.autograd.gradcheck(lambda p: masked_l2_loss(p.float(), target.float(), idx).double(), pred,
                                    eps=1e-3, atol=1e-3)


def test_masked_l2_loss_without_idx_and_non_contiguous():
    torch.manual_seed(0)
    target = torch.randn(2, 6, 4)
    pred = torch.randn(2, 4, 6).transpose(1, 2)  # non-contiguous [2, 6, 4]
    idx = torch.arange(6).expand(2, 6)
    assert masked_l2_loss(pred, target).item() == pytest.approx(masked_l2_loss(pred, target, idx).item())


@pytest.mark.parametrize(
    "pred,target,idx,message",
    [
        (torch.randn(2, 3), torch.randn(2, 4, 3), None, r"pred must be \[B, M, D\]"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 6), torch.zeros(2, 3, dtype=torch.long), "does not match"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.tensor([[0, 1, 4], [0, 0, 0]]), "out of range"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.tensor([[0, 1, -1], [0, 0, 0]]), "out of range"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.zeros(2, 3), "int32 or int64"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.zeros(2, 2, dtype=torch.long), r"idx must be \[B, M\]"),
        (torch.randn(2, 3, 5).int(), torch.randn(2, 4, 5), None, "float32/float16/bfloat16"),
    ],
)
def test_masked_l2_loss_refuses_bad_input(pred, target, idx, message):
    with pytest.raises(ValueError, match=message):
        masked_l2_loss(pred, target, idx)


def random_groups(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [[(), (7,), (3, 5)], [(64, 33), (1,)], [(2, 3, 4, 5)]]
    make = lambda s: torch.randn(s, generator=g).to(dtype)
    targets = [[make(s) for s in group] for group in shapes]
    sources = [[make(s) for s in group] for group in shapes]
    return targets, sources


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_update_matches_the_per_tensor_loop(dtype):
    targets, sources = random_groups(dtype)
    expected = [[t.clone() for t in group] for group in targets]
    taus = [0.9, 0.5, 0.996]
    ema_update_(targets, sources, taus)
    for group, src, exp, tau in zip(targets, sources, expected, taus):
        for t, s, e in zip(group, src, exp):
            want = (tau * e.double() + (1 - tau) * s.double()).to(dtype)
            torch.testing.assert_close(t, want, rtol=TOL[dtype], atol=TOL[dtype])
    reference = [[t.clone() for t in group] for group in expected]
    ema_update_reference_(reference, sources, taus)
    for group, ref in zip(targets, reference):
        for t, r in zip(group, ref):
            torch.testing.assert_close(t, r, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_tau_one_keeps_and_tau_zero_copies_exactly(dtype):
    targets, sources = random_groups(dtype)
    before = [[t.clone() for t in group] for group in targets]
    ema_update_(targets, sources, [1.0, 0.0, 1.0])
    assert all(torch.equal(t, b) for t, b in zip(targets[0], before[0]))
    assert all(torch.equal(t, s) for t, s in zip(targets[1], sources[1]))
    assert all(torch.equal(t, b) for t, b in zip(targets[2], before[2]))


def test_ema_accepts_flat_lists_and_one_tau():
    t, s = [torch.zeros(3), torch.zeros(2)], [torch.ones(3), torch.ones(2)]
    ema_update_(t, s, 0.75)
    assert torch.allclose(t[0], torch.full((3,), 0.25)) and torch.allclose(t[1], torch.full((2,), 0.25))


@pytest.mark.parametrize(
    "targets,sources,taus,message",
    [
        ([[torch.zeros(3)]], [[torch.zeros(4)]], [0.5], "does not match"),
        ([[torch.zeros(3)]], [[torch.zeros(3, dtype=torch.bfloat16)]], [0.5], "does not match"),
        ([[torch.zeros(3)]], [[torch.zeros(3)], [torch.zeros(3)]], [0.5], "groups"),
        ([[torch.zeros(3)]], [[torch.zeros(3)]], [0.5, 0.5], "taus for 1 groups"),
        ([[torch.zeros(3)]], [[torch.zeros(3)]], [1.5], r"must lie in \[0, 1\]"),
        ([[torch.zeros(3, dtype=torch.long)]], [[torch.zeros(3, dtype=torch.long)]], [0.5], "floating"),
    ],
)
def test_ema_refuses_mismatches(targets, sources, taus, message):
    with pytest.raises(ValueError, match=message):
        ema_update_(targets, sources, taus)


def naive_pool(q, k, v, window, visible):
    B, T, N, H, Dh = k.shape
    out = torch.zeros(B, T // window, N, H, Dh, dtype=torch.float64)
    for b, w, n, h in torch.cartesian_prod(*(torch.arange(s) for s in (B, T // window, N, H))).tolist():
        keys = range(w * window, (w + 1) * window)
        seen = [t for t in keys if visible is None or visible[b, t, n]]
        if not seen:
            continue
        scores = torch.stack([q[h].double() @ k[b, t, n, h].double() / math.sqrt(Dh) for t in seen])
        weights = torch.softmax(scores, 0)
        out[b, w, n, h] = sum(wt * v[b, t, n, h].double() for wt, t in zip(weights, seen))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window,N,Dh,masked", [(2, 3, 8, False), (4, 5, 6, True), (3, 1, 4, True)])
def test_temporal_attention_pool_matches_a_loop(dtype, window, N, Dh, masked):
    g = torch.Generator().manual_seed(window)
    B, T, H = 2, 2 * window, 2
    q = torch.randn(H, Dh, generator=g).to(dtype)
    k, v = (torch.randn(B, T, N, H, Dh, generator=g).to(dtype) for _ in range(2))
    visible = torch.rand(B, T, N, generator=g) > 0.4 if masked else None
    if masked:
        visible[0, :window, 0] = False  # one window with nothing visible -> zeros
    out = temporal_attention_pool(q, k, v, window, visible)
    assert out.shape == (B, T // window, N, H, Dh) and out.dtype == dtype
    torch.testing.assert_close(out.double(), naive_pool(q, k, v, window, visible), rtol=TOL[dtype], atol=TOL[dtype])


def test_temporal_attention_pool_refuses_bad_shapes():
    k = torch.randn(1, 6, 2, 2, 4)
    with pytest.raises(ValueError, match="multiple of window"):
        temporal_attention_pool(torch.randn(2, 4), k, k, 4)
    with pytest.raises(ValueError, match=r"q must be \[H, Dh\]"):
        temporal_attention_pool(torch.randn(3, 4), k, k, 2)
