"""Fixed sine-cosine position embeddings of a ``(T, H, W)`` token grid (no parameters: nothing to
resume, any grid size)."""
from __future__ import annotations

import torch


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions ``[L]`` -> ``[L, dim]`` (dim even: sin half, cos half; odd dims get a zero column)."""
    half = dim // 2
    freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1)))
    angles = positions.double()[:, None] * freq[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros(len(positions), 1, dtype=emb.dtype)], dim=1)
    return emb.float()


def sincos_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """``[T*H*W, dim]`` in time-major order (index ``t*H*W + h*W + w``): the time embedding plus a 2D
    spatial embedding whose halves code rows and columns."""
    T, H, W = grid
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    half = dim // 2
    spatial = torch.cat([sincos_1d(h.flatten(), half), sincos_1d(w.flatten(), dim - half)], dim=1)
    return sincos_1d(t.flatten(), dim) + spatial
