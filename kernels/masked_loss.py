"""Masked-token L2-normalised latent loss: the loss every H-JEPA level computes.

value = mean over the B*M predicted tokens of || p/||p|| - t/||t|| ||^2, with ``t`` gathered from the
target encoder's output at the target indices. Gradient flows to ``pred`` only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_and_gather(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Validate shapes, dtypes, devices and index range; return the target rows ``[B, M, D]``."""
    if pred.dim() != 3:
        raise ValueError(f"pred must be [B, M, D], got shape {tuple(pred.shape)}")
    if target.dim() != 3:
        raise ValueError(f"target must be [B, N, D], got shape {tuple(target.shape)}")
    if pred.dtype not in _FLOAT_DTYPES or target.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"pred and target must be float32/float16/bfloat16, got {pred.dtype}, {target.dtype}")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target is on {target.device}")
    B, M, D = pred.shape
    if target.shape[0] != B or target.shape[2] != D:
        raise ValueError(f"target {tuple(target.shape)} does not match pred {tuple(pred.shape)} in B or D")
    if idx is None:
        if target.shape[1] != M:
            raise ValueError(f"without idx, target must be [B, M, D] = {(B, M, D)}, got {tuple(target.shape)}")
        return target
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be int32 or int64, got {idx.dtype}")
    if idx.device != pred.device:
        raise ValueError(f"idx is on {idx.device} but pred is on {pred.device}")
    if idx.dim() == 1:
        idx = idx.unsqueeze(0).expand(B, -1)
    if idx.shape != (B, M):
        raise ValueError(f"idx must be [B, M] = {(B, M)} or [M], got {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= target.shape[1]):
        raise ValueError(f"idx out of range [0, {target.shape[1]}): min {int(idx.min())}, max {int(idx.max())}")
    batch = torch.arange(B, device=idx.device).unsqueeze(1)
    return target[batch, idx]


def masked_l2_loss_reference(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch reference. pred ``[B, M, D]``, target ``[B, N, D]``, idx ``[B, M]`` or ``[M]``."""
    gathered = _check_and_gather(pred, target, idx).detach()
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(gathered.float(), dim=-1)
    return (p - t).pow(2).sum(-1).mean()


def masked_l2_loss(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Masked-token L2-normalised loss (scalar, float32). See module docstring; the fused Triton kernel
    replaces this body on CUDA."""
    return masked_l2_loss_reference(pred, target, idx)
