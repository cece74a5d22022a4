"""temporal_attention_pool against a per-window loop, with and without hidden steps."""
from __future__ import annotations

import math

import pytest
import torch

from hjepa_fast.kernels import temporal_attention_pool

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


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
