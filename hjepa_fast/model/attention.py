"""One entry point for attention: flash-attn, xformers, cuDNN or torch SDPA, picked once per call site.

Unmasked attention on CUDA in half precision goes to flash-attn, then xformers, when installed (or when
forced by ``model.attention_backend``); ``cudnn`` runs torch SDPA with cuDNN's fused attention first in
its priority list (Hopper's fastest kernel that ships with torch; torch otherwise tries its own flash
kernel first), falling back to torch's own order where cuDNN refuses a shape. Everything else, and any
call with a mask, goes to torch SDPA.
"""
from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = ("auto", "sdpa", "cudnn", "flash", "xformers")
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]
_MODULES = {"flash": "flash_attn", "xformers": "xformers.ops"}
_INSTALL = {"flash": "pip install flash-attn (or the 'gpu' extra)", "xformers": "pip install xformers"}


@functools.cache
def _load(backend: str):
    try:
        return importlib.import_module(_MODULES[backend])
    except ImportError:
        return None


def resolve_backend(backend: str) -> str:
    """Which backend unmasked CUDA attention uses: 'auto' takes the first installed of flash, xformers, sdpa.
    A forced backend that is not installed raises ImportError with the install command."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return next((b for b in ("flash", "xformers") if _load(b) is not None), "sdpa")
    if backend not in ("sdpa", "cudnn") and _load(backend) is None:
        raise ImportError(f"attention backend {backend!r} is not installed: {_INSTALL[backend]}")
    return backend


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, backend: str = "sdpa"
) -> torch.Tensor:
    """Scaled dot-product attention. q ``[B, H, Lq, Dh]``, k/v ``[B, H, Lk, Dh]``, mask bool broadcastable
    to ``[B, H, Lq, Lk]`` (True: may attend). Returns ``[B, H, Lq, Dh]``. ``backend`` is a resolved name."""
    fused_ok = mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if fused_ok and backend == "flash":
        out = _load("flash").flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if fused_ok and backend == "xformers":
        out = _load("xformers").memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if fused_ok and backend == "cudnn":
        with sdpa_kernel(_CUDNN_FIRST, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
