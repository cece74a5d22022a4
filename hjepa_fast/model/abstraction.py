"""Temporal abstraction: the bridge from level l to level l+1, pooling each spatial token over the
``window`` time steps of a window.

Every variant takes ``x`` ``[B, T, N, D_in]`` and ``visible`` ``[B, T, N]`` (None: all visible) and
returns ``[B, T // window, N, D_out]``. The online path passes only the level below's *context*
encodings as visible: a partly held-out window pools what is visible, and a window with nothing visible
becomes a learned ``empty`` token that carries no input at all.
"""
from __future__ import annotations

import torch
from torch import nn

from hjepa_fast.kernels import temporal_attention_pool


class _Abstraction(nn.Module):
    """Shared parts: the window split, the learned ``empty`` token, and a LayerNorm on the pooled tokens.
    The norm matters: without it the pooled content, shrunk by two small-initialised projections, is
    ~30x smaller than the position embedding added next, and the level's targets start (and stay)
    almost a function of position alone."""

    def __init__(self, dim_out: int, window: int):
        super().__init__()
        self.window = window
        self.empty = nn.Parameter(torch.zeros(dim_out))
        self.out_norm = nn.LayerNorm(dim_out)

    def _windows(self, x: torch.Tensor, visible: torch.Tensor | None):
        """``[B, T, N, D]`` -> ``[B, W, k, N, D]`` with hidden entries zeroed, and the visibility."""
        B, T, N, D = x.shape
        if T % self.window:
            raise ValueError(f"{T} time steps are not a multiple of the temporal window {self.window}")
        if visible is None:
            visible = torch.ones(B, T, N, dtype=torch.bool, device=x.device)
        vis = visible.reshape(B, T // self.window, self.window, N, 1)
        return x.reshape(B, T // self.window, self.window, N, D) * vis, vis

    def _fill_empty(self, out: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        any_visible = vis.any(dim=2)  # [B, W, N, 1]
        return torch.where(any_visible, out, self.empty.to(out.dtype))


class AveragePool(_Abstraction):
    """Mean over the visible steps of a window, then a linear projection."""

    def __init__(self, dim_in: int, dim_out: int, window: int):
        super().__init__(dim_out, window)
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        xw, vis = self._windows(x, visible)
        mean = xw.sum(2) / vis.sum(2).clamp(min=1)
        return self._fill_empty(self.out_norm(self.proj(mean)), vis)


class StridedConvPool(_Abstraction):
    """A temporal convolution with kernel = stride = window (a linear map of the concatenated window);
    hidden steps enter as zeros."""

    def __init__(self, dim_in: int, dim_out: int, window: int):
        super().__init__(dim_out, window)
        self.proj = nn.Linear(window * dim_in, dim_out)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        xw, vis = self._windows(x, visible)
        B, W, k, N, D = xw.shape
        return self._fill_empty(self.out_norm(self.proj(xw.permute(0, 1, 3, 2, 4).reshape(B, W, N, k * D))), vis)


class TemporalAttentionPool(_Abstraction):
    """Learnable queries (one per head) attend over the window's visible steps
    (``hjepa_fast.kernels.temporal_attention_pool``), between key/value and output projections."""

    def __init__(self, dim_in: int, dim_out: int, window: int, heads: int):
        super().__init__(dim_out, window)
        if dim_out % heads:
            raise ValueError(f"dim_out {dim_out} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim_in)
        self.k = nn.Linear(dim_in, dim_out)
        self.v = nn.Linear(dim_in, dim_out)
        self.query = nn.Parameter(torch.randn(heads, dim_out // heads) * 0.02)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        B, T, N, _ = x.shape
        h = self.norm(x)
        shape = (B, T, N, self.heads, -1)
        pooled = temporal_attention_pool(
            self.query.to(h.dtype), self.k(h).reshape(shape), self.v(h).reshape(shape), self.window, visible
        )
        out = self.out_norm(self.proj(pooled.reshape(B, T // self.window, N, -1)))
        if visible is None:
            return out
        return self._fill_empty(out, visible.reshape(B, T // self.window, self.window, N, 1))


def build_abstraction(kind: str, dim_in: int, dim_out: int, window: int, heads: int) -> _Abstraction:
    """``kind``: 'average' | 'conv' | 'attention' (model.abstraction)."""
    if kind == "average":
        return AveragePool(dim_in, dim_out, window)
    if kind == "conv":
        return StridedConvPool(dim_in, dim_out, window)
    if kind == "attention":
        return TemporalAttentionPool(dim_in, dim_out, window, heads)
    raise ValueError(f"unknown temporal abstraction {kind!r}; choose average, conv or attention")
