"""masked_l2_loss against an independent formula: values, gradients, input checks."""
from __future__ import annotations

import pytest
import torch

from hjepa_fast.kernels import masked_l2_loss

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
