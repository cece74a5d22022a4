"""ema_update_ against the per-tensor loop: mixed shapes and dtypes, exact ends, input checks."""
from __future__ import annotations

import pytest
import torch

from hjepa_fast.kernels import ema_update_, ema_update_reference_

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


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
