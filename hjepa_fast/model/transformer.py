"""Pre-norm transformer blocks on timm's Mlp, with our attention dispatch, stochastic depth and an
optional cross-attention for top-down context."""
from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import nn

from .attention import attention


class StochasticDepth(nn.Module):
    """Per-sample residual-branch drop in training (timm's DropPath, scaled by the keep rate). The rate is
    a 0-dim buffer, not a Python float: blocks of every non-zero rate are then one graph to
    ``torch.compile`` (a float attribute is a guard: one graph per rate). Rate 0 is a no-op."""

    def __init__(self, rate: float):
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)
        self.active = rate > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active):
            return x
        keep = 1.0 - self.rate
        kept = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) < keep
        return x * (kept / keep).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Self-attention (``context`` None) or cross-attention to ``context`` ``[B, Lk, Dk]``."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, backend: str = "sdpa"):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        B, L, D = x.shape
        src = x if context is None else context
        q = self.q(x).view(B, L, self.heads, D // self.heads).transpose(1, 2)
        k, v = self.kv(src).view(B, src.shape[1], 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, mask, self.backend)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """x -> x + attn(norm x) [+ cross(norm x, context)] + mlp(norm x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 context_dim: int | None = None, backend: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, backend=backend)
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = MultiHeadAttention(dim, heads, context_dim=context_dim, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask=mask))
        if context is not None:
            x = x + self.drop_path(self.cross(self.norm_cross(x), context=context, mask=context_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def stochastic_depth(drop_path: float, depth: int) -> list[float]:
    """Linearly increasing drop-path rates, as in timm's ViT."""
    return [drop_path * i / max(depth - 1, 1) for i in range(depth)]


def init_xavier(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears (each keeps the scale of its input), zero biases, unit
    LayerNorms. In a narrow predictor whose tokens are dominated by their position embedding, std-0.02
    linears attenuate the context's content at every layer (measured: predictions varied 1e-5 as much as
    the context across clips at initialisation); xavier lets it through."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_weights(module: nn.Module) -> None:
    """timm ViT initialisation: truncated normal linears (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
