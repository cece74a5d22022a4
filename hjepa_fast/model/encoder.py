"""Per-level encoders: a tokenizer (patch embedding at level 1, temporal abstraction above), fixed
position embeddings, and a transformer that runs on the kept (context) tokens only: masked tokens are
dropped, not zeroed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .posembed import sincos_3d
from .transformer import Block, init_weights, stochastic_depth


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x ``[B, L, D]``, idx ``[B, K]`` -> ``[B, K, D]``."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), idx]


def scatter_tokens(z: torch.Tensor, idx: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place z ``[B, K, D]`` at idx ``[B, K]`` of a zero grid ``[B, length, D]``; also return the
    visibility ``[B, length]`` (True where a token was placed)."""
    B, K, D = z.shape
    rows = torch.arange(B, device=z.device).unsqueeze(1)
    grid = z.new_zeros(B, length, D).index_put((rows, idx), z)
    visible = torch.zeros(B, length, dtype=torch.bool, device=z.device).index_put((rows, idx), torch.tensor(True))
    return grid, visible


class PatchEmbed3D(nn.Module):
    """Clips ``[B, T, C, H, W]`` -> tokens ``[B, T / tubelet, (H/p)*(W/p), D]``: each tubelet x patch
    flattened and projected, the Conv3d whose kernel equals its stride written as one matmul. The weight
    stays a Conv3d's (checkpoints unchanged); cuDNN's 3-d convolution took 36 ms of a 550 ms ViT-B step
    on an H200 in bf16 (a generic implicit-GEMM kernel), the matmul a few."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, tubelet: int):
        super().__init__()
        self.patch_size, self.tubelet = patch_size, tubelet
        self.proj = nn.Conv3d(in_chans, dim, (tubelet, patch_size, patch_size), (tubelet, patch_size, patch_size))

    def forward(self, clips: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C, H, W = clips.shape
        t, p = self.tubelet, self.patch_size
        x = clips.reshape(B, T // t, t, C, H // p, p, W // p, p).permute(0, 1, 4, 6, 3, 2, 5, 7)
        x = x.reshape(B, T // t, (H // p) * (W // p), C * t * p * p)  # one row per patch, the kernel's order
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)


class LevelEncoder(nn.Module):
    """tokenizer -> + position -> keep ``keep`` tokens -> transformer -> LayerNorm.

    forward(inp, visible=None, keep=None) -> ``[B, K, D]`` (K = kept tokens, or all ``T*N``)."""

    def __init__(self, tokenizer: nn.Module, grid: tuple[int, int, int], dim: int, depth: int, heads: int,
                 mlp_ratio: float, drop_path: float, backend: str):
        super().__init__()
        self.tokenizer, self.grid = tokenizer, grid
        self.register_buffer("pos", sincos_3d(grid, dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dp, backend=backend) for dp in stochastic_depth(drop_path, depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)

    def forward(self, inp: torch.Tensor, visible: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokenizer(inp, visible)
        x = x.flatten(1, 2) + self.pos.to(x.dtype)
        if keep is not None:
            x = gather_tokens(x, keep)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
