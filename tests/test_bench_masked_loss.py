"""benchmarks.bench_masked_loss compares like with like: its I-JEPA-trainer baseline computes the same loss
and gradient as ``masked_jepa_loss`` on the un-gathered targets it is timed against."""
from __future__ import annotations

import torch

from benchmarks import bench_masked_loss as bench
from hjepa_fast.kernels import masked_loss as ml


def test_ijepa_trainer_baseline_equals_the_loss_it_is_timed_against():
    B, M, N, D, Bt = bench.IJEPA_TRAINER["quick"]
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(B, M, D, generator=g).requires_grad_()
    target = torch.randn(Bt, N, D, generator=g)
    idx = torch.rand(B, N, generator=g).argsort(1)[:, :M]
    want = ml.masked_jepa_loss_reference(pred, target, idx)
    got = bench.ijepa_trainer_loss(pred, target, idx)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(want, pred)[0])


def test_cases_end_with_the_trainer_against_a_broadcast_target():
    cases = bench.cases(torch.device("cpu"), quick=True)
    assert [c.op for c in cases[:-1]] == ["l2", "ijepa"] * len(bench.QUICK_SHAPES["cpu"])
    assert all(c.shape[0] == c.shape[4] for c in cases[:-1])  # the recipe shapes: one target per row
    last = cases[-1]
    assert last.op == "ijepa trainer" and last.eager is bench.ijepa_trainer_loss
    assert last.shape[0] % last.shape[4] == 0 and last.shape[4] < last.shape[0]
