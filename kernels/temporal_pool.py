"""Temporal attention pooling: one learnable query per head attends over the ``window`` time steps of
each window, per spatial token. The bridge between H-JEPA levels."""
from __future__ import annotations

import math

import torch


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None) -> None:
    if k.dim() != 5 or v.shape != k.shape:
        raise ValueError(f"k and v must both be [B, T, N, H, Dh], got {tuple(k.shape)} and {tuple(v.shape)}")
    H, Dh = k.shape[3], k.shape[4]
    if q.shape != (H, Dh):
        raise ValueError(f"q must be [H, Dh] = {(H, Dh)}, got {tuple(q.shape)}")
    if window < 1 or k.shape[1] % window:
        raise ValueError(f"T = {k.shape[1]} must be a positive multiple of window = {window}")
    if visible is not None and visible.shape != k.shape[:3]:
        raise ValueError(f"visible must be [B, T, N] = {tuple(k.shape[:3])}, got {tuple(visible.shape)}")


def temporal_attention_pool_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """q ``[H, Dh]``, k/v ``[B, T, N, H, Dh]`` -> ``[B, T // window, N, H, Dh]``; softmax in float32.

    ``visible`` ``[B, T, N]`` (bool) hides keys: a window partly held out pools only what is visible,
    a window with nothing visible returns zeros (the caller substitutes a learned "empty" token)."""
    _check(q, k, v, window, visible)
    B, T, N, H, Dh = k.shape
    kw = k.reshape(B, T // window, window, N, H, Dh).float()
    vw = v.reshape(B, T // window, window, N, H, Dh).float()
    scores = torch.einsum("bwknhd,hd->bwknh", kw, q.float()) / math.sqrt(Dh)
    if visible is not None:
        vis = visible.reshape(B, T // window, window, N, 1)
        # a large finite fill keeps all-hidden windows free of NaN in forward and backward
        weights = torch.softmax(scores.masked_fill(~vis, -1e30), dim=2) * vis.any(dim=2, keepdim=True)
    else:
        weights = torch.softmax(scores, dim=2)
    out = torch.einsum("bwknh,bwknhd->bwnhd", weights, vw)
    return out.to(v.dtype)


def temporal_attention_pool(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """Functional entry point (see the reference for shapes); the Triton kernel replaces it on CUDA."""
    return temporal_attention_pool_reference(q, k, v, window, visible)
