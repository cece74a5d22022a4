"""The narrow predictor of one level: context encodings + mask tokens at the target positions
[+ action tokens] [+ top-down context from the level above] -> predicted target encodings.

All targets of a level are predicted in one pass (mask tokens at every target position, as V-JEPA does),
so the predictor's cost does not grow with the number of target blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import gather_tokens
from .posembed import sincos_1d, sincos_3d
from .topdown import causal_allowed, latest_allowed
from .transformer import Block, init_weights, init_xavier, stochastic_depth

TOPDOWN_MODES = ("none", "cross", "film", "prepend")


class MacroActionEncoder(nn.Module):
    """A level's macro-action: the chunk of ``chunk`` lower-level actions inside one of its steps,
    ``[B, T, chunk * A]`` -> ``[B, T, dim]`` by a two-layer MLP. Unlike an average, it keeps the order
    inside the chunk (right-then-up and up-then-right differ on the way, if not at the end)."""

    def __init__(self, action_dim: int, chunk: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(chunk * action_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return self.net(actions)


def _to_next_step(per_step: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]`` -> the same one step later (step t's entry moves to t + 1; step 0 gets zeros): what
    step t's action caused belongs to step t + 1's tokens."""
    return torch.cat([torch.zeros_like(per_step[:, :1]), per_step[:, :-1]], 1)


class Predictor(nn.Module):
    """forward(z_ctx [B, Nc, D], ctx_idx [B, Nc], tgt_idx [B, Nt], actions [B, T, A] | None,
    topdown (keys [B, S, D_up], valid [B, S][, predicted [B, S]]) | None) -> predictions [B, Nt, D].

    ``actions``: ``[B, T, action_chunk * A]`` (step t's leads to step t + 1: its own token, and added to
    the tokens of step t + 1); with ``action_chunk > 1`` they enter through a
    ``MacroActionEncoder``, else through a linear embedding. ``action_accumulate``: the tokens of step
    t + 1 also get the running sum over steps 0..t of a second (linear) action embedding, where the
    actions so far have led: integrating velocities through attention alone is hard for a narrow
    predictor (on panworld the predictions' response to actions is 0.55 of the real outcomes' with it, 0.20
    without: benchmarks/reports/2026-11-30-planning.md). ``init``: ``trunc_normal`` (timm's std 0.02) or
    ``xavier`` (MAE's; see ``transformer.init_xavier``). ``topdown`` modes: 'cross' (cross-attention in
    every block), 'film' (scale and shift of each target token's output features from the most recent
    allowed coarse step), 'prepend' (coarse steps as extra tokens, reached through an attention mask).
    ``window``: level-l steps per step of the level above. ``keys_per_step``: top-down keys per coarse
    step (1: its summary; H' * W': one per position, ``model.topdown_keys=token``; not with 'film').

    Each token's own read of the top-down context is causal (``topdown.causal_allowed``); with 'cross'
    and 'prepend', the predictor's self-attention can still pass what one token read to another, as it
    passes the context itself. No input leaks either way: the level above only ever saw level-1 context,
    which excludes every level's targets (``masks.HierarchicalMaskSampler``)."""

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, grid: tuple[int, int, int],
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, backend: str = "sdpa", action_dim: int = 0,
                 topdown: str = "none", topdown_dim: int | None = None, window: int = 1, action_chunk: int = 1,
                 action_accumulate: bool = False, init: str = "trunc_normal", keys_per_step: int = 1):
        super().__init__()
        if topdown not in TOPDOWN_MODES:
            raise ValueError(f"unknown top-down mode {topdown!r}; choose one of {TOPDOWN_MODES}")
        if topdown == "film" and keys_per_step != 1:
            raise ValueError("top-down 'film' reads one key per coarse step (keys_per_step 1), got "
                             f"{keys_per_step}: use 'cross' or 'prepend' for per-token keys")
        self.grid, self.topdown_mode, self.window, self.keys_per_step = grid, topdown, window, keys_per_step
        self.tokens_per_step = grid[1] * grid[2]
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.register_buffer("pos", sincos_3d(grid, dim), persistent=False)
        self.action_embed = None
        if action_dim:
            self.action_embed = (MacroActionEncoder(action_dim, action_chunk, dim) if action_chunk > 1
                                 else nn.Linear(action_dim, dim))
        self.action_sum_embed = (nn.Linear(action_chunk * action_dim, dim, bias=False)
                                 if action_dim and action_accumulate else None)
        self.register_buffer("time_pos", sincos_1d(torch.arange(grid[0]), dim), persistent=False)
        if topdown != "none":
            self.td_proj = nn.Linear(topdown_dim, dim)
            self.td_null = nn.Parameter(torch.zeros(dim))
        if topdown == "film":
            self.film = nn.Linear(dim, 2 * dim)
        cross_dim = dim if topdown == "cross" else None
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dp, context_dim=cross_dim, backend=backend)
            for dp in stochastic_depth(drop_path, depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, enc_dim)
        self.apply(init_xavier if init == "xavier" else init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        if self.action_embed is not None:  # actions must move predictions from the start (see forward)
            parts = [part for part in (self.action_embed, self.action_sum_embed) if part is not None]
            for layer in (module for part in parts for module in part.modules()):
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
        if topdown == "film":  # start as the identity
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, z_ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor,
                actions: torch.Tensor | None = None,
                topdown: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, Nt = tgt_idx.shape
        pos = self.pos.to(z_ctx.dtype).expand(B, -1, -1)
        x = torch.cat([self.embed(z_ctx) + gather_tokens(pos, ctx_idx),
                       self.mask_token + gather_tokens(pos, tgt_idx)], dim=1)
        times = torch.cat([ctx_idx, tgt_idx], dim=1) // self.tokens_per_step
        prefix = []
        if self.action_embed is not None:
            if actions is None:
                raise ValueError("this predictor is action-conditioned (model.action_dim > 0) but got no actions")
            # step t's action leads from step t to t + 1: it enters as a token of its own (any token reads
            # it) and is added to the tokens of step t + 1 (a direct path: through attention alone, with
            # ViT's small init, trained predictors ignored the actions, measured on panworld)
            embedded = self.action_embed(actions)  # [B, T, dim]
            prefix.append(embedded + self.time_pos.to(x.dtype))
            x = x + gather_tokens(_to_next_step(embedded), times)
            if self.action_sum_embed is not None:  # where the actions so far have led (a running sum)
                x = x + gather_tokens(_to_next_step(torch.cumsum(self.action_sum_embed(actions), 1)), times)
        mask = context = context_mask = film = None
        if self.topdown_mode != "none" and topdown is not None:
            summary, valid, *rest = topdown
            predicted = rest[0] if rest else None
            keys = torch.cat([self.td_null.expand(B, 1, -1), self.td_proj(summary)], dim=1)  # [B, 1+S, dim]
            allowed = causal_allowed(times, self.window, valid, predicted, self.keys_per_step)  # [B, L, 1+S]
            if self.topdown_mode == "film":
                film = self.film(gather_tokens(keys, latest_allowed(allowed[:, -Nt:])))
            elif self.topdown_mode == "cross":  # action tokens (if any) read only the null key
                n_actions = sum(p.shape[1] for p in prefix)
                null_only = torch.zeros_like(allowed[:, :1]).expand(-1, n_actions, -1).clone()
                null_only[..., 0] = True
                context, context_mask = keys, torch.cat([null_only, allowed], dim=1).unsqueeze(1)
            else:
                mask = self._prepend_mask(allowed, sum(p.shape[1] for p in prefix))
                prefix.insert(0, keys)
        x = torch.cat([*prefix, x], dim=1)
        for block in self.blocks:
            x = block(x, mask=mask, context=context, context_mask=context_mask)
        out = self.norm(x[:, -Nt:])
        if film is not None:  # per target token, after the blocks: no other token's top-down reaches it
            gamma, beta = film.chunk(2, dim=-1)
            out = out * (1 + gamma) + beta
        return self.head(out)

    @staticmethod
    def _prepend_mask(allowed: torch.Tensor, n_actions: int) -> torch.Tensor:
        """Attention mask ``[B, 1, S', S']`` for [top-down keys | actions | tokens]: tokens reach the keys
        that ``allowed`` permits; keys see only the null key and themselves; actions see no key but the
        null, so nothing routes the future around the causal rule."""
        B, L, K = allowed.shape
        total = K + n_actions + L
        mask = torch.ones(B, total, total, dtype=torch.bool, device=allowed.device)
        key_rows = torch.eye(K, dtype=torch.bool, device=allowed.device)
        key_rows[:, 0] = True
        mask[:, :K, :K] = key_rows
        mask[:, :K, K:] = False
        mask[:, K:K + n_actions, 1:K] = False
        mask[:, K + n_actions:, :K] = allowed
        return mask.unsqueeze(1)
