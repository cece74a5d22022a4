"""Analytic FLOP count of one H-JEPA training step, the numerator of model FLOP utilisation (MFU).

Convention (PaLM's MFU, FlashAttention's): only matrix products count, 2 FLOPs per multiply-add; norms,
activations, softmax, masking, gathers/scatters and the loss are left out (elementwise work, a few per
cent at these widths). Counts are for the whole batch ``B``; per level ``l`` the token grid is
``(T_l, H', W')`` with ``N_l = T_l * H' * W'`` tokens of width ``D_l``, and the step's masks keep
``Nc_l`` context and ``Nt_l`` target tokens per clip.

Transformer block on ``L`` tokens of width ``D``, MLP hidden ``F = int(D * mlp_ratio)``:

- attention: QKV ``2*L*D*3D`` (q: D->D, kv: D->2D), scores ``2*L*L*D`` (Q K^T summed over heads),
  AV ``2*L*L*D``, output projection ``2*L*D*D``;
- MLP: ``2 * 2*L*D*F``;
- cross-attention (predictor, ``topdown='cross'``) to ``S`` keys of width ``D``: q ``2*L*D*D``,
  kv ``2*S*D*2D``, scores and AV ``2 * 2*L*S*D``, projection ``2*L*D*D``.

Level encoder ``l``; its tokenizer runs on the full grid (tokens are dropped after it), its blocks on
``K`` tokens (``Nc_l`` online, ``N_l`` for the target encoder):

- level 1 patch embedding (Conv3d, kernel tubelet x p x p): ``2 * N_1 * (C*tubelet*p*p) * D_1``;
- level l > 1 abstraction from ``N_{l-1}`` tokens of width ``D_{l-1}`` (window ``w``):
  attention: k, v ``2 * 2*N_{l-1}*D_{l-1}*D_l``, pooling ``4*N_{l-1}*D_l`` (one query per head:
  scores + weighted sum over each window), projection ``2*N_l*D_l*D_l``; average ``2*N_l*D_{l-1}*D_l``;
  conv ``2*N_l*w*D_{l-1}*D_l``.

Predictor ``l`` of width ``P`` on ``L = Nc_l + Nt_l`` tokens per pass (``predictor_passes``: one, or a
rollout's k) (+ ``T_l`` action tokens, + ``1 + T_{l+1}``
prepended top-down keys): embedding ``2*Nc*D_l*P``, actions ``2*T_l*A*P`` at level 1 and, above, a
macro-action MLP on the ``c`` actions of each step ``2*T_l*c*A*P + 2*T_l*P*P``, top-down projection
``2*T_{l+1}*D_{l+1}*P``, its blocks (with cross-attention to ``1 + T_{l+1}`` keys in 'cross' mode),
FiLM ``2*Nt*P*2P``, head ``2*Nt*P*D_l``.

A training step is ``3 x`` the online forward (encoders on the context + predictors: the backward is
``2 x`` the forward, input and weight gradients) ``+ 1 x`` the target encoders' forward (no grad); the
layers fed by the data (level-1 patch embedding, action embeddings) have no input gradient: ``2 x``.
Activation checkpointing recomputes forwards: that is hardware FLOPs, not counted (MFU counts model
FLOPs).

Anchor: ViT-B/16 on one 224 px image (196 tokens) is ~17.6 GMAC forward (``encoder_forward`` of a
1-level 768-d, 12-layer stack gives 34.9 GFLOP = 17.5 GMAC; the 17.6 usually quoted also counts
the class token and the classifier head).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hjepa_fast.config import Config, level_time_steps
from hjepa_fast.masks import LevelMasks


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step over the whole batch; ``parts`` holds each part's forward FLOPs."""

    online_forward: float
    target_forward: float
    data_layers_online: float  # part of online_forward fed by the data: its backward is 1 x, not 2 x
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def train_step(self) -> float:
        return 3 * self.online_forward - self.data_layers_online + self.target_forward


def block_flops(tokens: int, dim: int, mlp_hidden: int, context: int = 0) -> float:
    """One transformer block on ``tokens`` tokens of width ``dim`` (+ cross-attention to ``context`` keys)."""
    L, D = tokens, dim
    flops = 2 * L * D * 3 * D + 4 * L * L * D + 2 * L * D * D + 4 * L * D * mlp_hidden
    if context:
        flops += 4 * L * D * D + 4 * context * D * D + 4 * L * context * D
    return float(flops)


def encoder_forward(cfg: Config, level: int, kept: int) -> tuple[float, float]:
    """(tokenizer, blocks) forward FLOPs of level ``level``'s encoder (0-based) for ONE clip whose
    blocks see ``kept`` tokens."""
    m = cfg.model
    side = m.img_size // m.patch_size
    steps = level_time_steps(cfg)
    n, d = steps[level] * side * side, m.encoder_dims[level]
    if level == 0:
        tokenizer = 2 * n * (m.in_chans * m.tubelet * m.patch_size**2) * d
    else:
        n_below, d_below, window = steps[level - 1] * side * side, m.encoder_dims[level - 1], m.temporal_strides[level]
        tokenizer = {
            "attention": 4 * n_below * d_below * d + 4 * n_below * d + 2 * n * d * d,
            "average": 2 * n * d_below * d,
            "conv": 2 * n * window * d_below * d,
        }[m.abstraction]
    blocks = m.encoder_depths[level] * block_flops(kept, d, int(d * m.mlp_ratio))
    return float(tokenizer), blocks


def predictor_forward(cfg: Config, level: int, context: int, targets: int) -> tuple[float, float]:
    """(action embedding, everything else) forward FLOPs of level ``level``'s predictor (0-based) for ONE
    clip."""
    m = cfg.model
    steps = level_time_steps(cfg)
    d, p = m.encoder_dims[level], m.predictor_dims[level]
    tokens = context + targets + (steps[level] if m.action_dim else 0)
    chunk = 1 if level == 0 else cfg.data.frames // steps[level]  # level > 1: a macro-action per step
    actions = 2 * steps[level] * chunk * m.action_dim * p
    flops = 2 * context * d * p + 2 * targets * p * d
    if m.action_dim and chunk > 1:  # the macro-action MLP's second layer (it has an input gradient)
        flops += 2 * steps[level] * p * p
    keys = 0
    if level + 1 < m.levels and m.topdown != "none":
        above = steps[level + 1] * ((m.img_size // m.patch_size) ** 2 if m.topdown_keys == "token" else 1)
        flops += 2 * above * m.encoder_dims[level + 1] * p
        if m.topdown == "cross":
            keys = 1 + above
        elif m.topdown == "prepend":
            tokens += 1 + above
        else:  # film
            flops += 2 * targets * p * 2 * p
    return float(actions), flops + m.predictor_depths[level] * block_flops(tokens, p, int(p * m.mlp_ratio), keys)


def predictor_passes(cfg: Config, level: int, context: int, targets: int) -> list[tuple[int, int]]:
    """(context, target) tokens per clip of each of level ``level``'s predictor passes: one, or with
    ``loss.rollout_steps`` = k > 1 a rollout (``HJEPA.rollout_level``): k - 1 passes of one step each,
    every pass's step added to the next one's context, then the rest."""
    hw = (cfg.model.img_size // cfg.model.patch_size) ** 2
    passes = max(1, min(cfg.loss.rollout_steps[level], targets // hw))
    return [(context + j * hw, hw) for j in range(passes - 1)] + [(context + (passes - 1) * hw,
                                                                    targets - (passes - 1) * hw)]


def step_flops(cfg: Config, batch_size: int, context_tokens: Sequence[int], target_tokens: Sequence[int]) -> StepFlops:
    """FLOPs of one training step of ``batch_size`` clips whose masks keep ``context_tokens[l]`` and
    ``target_tokens[l]`` tokens per clip at level ``l`` (see the module docstring for the count)."""
    L = cfg.model.levels
    if not len(context_tokens) == len(target_tokens) == L:
        raise ValueError(f"need one context and one target count per level ({L}), got {context_tokens}, "
                         f"{target_tokens}")
    side = cfg.model.img_size // cfg.model.patch_size
    full = [t * side * side for t in level_time_steps(cfg)]
    parts: dict[str, float] = {}

    def add(name: str, flops: float) -> None:
        parts[name] = parts.get(name, 0.0) + batch_size * flops

    for level in range(L):
        tok, blocks = encoder_forward(cfg, level, context_tokens[level])
        add("online/patch_embed" if level == 0 else "online/abstraction", tok)
        add("online/encoder_blocks", blocks)
        for context, targets in predictor_passes(cfg, level, context_tokens[level], target_tokens[level]):
            actions, predictor = predictor_forward(cfg, level, context, targets)
            add("online/action_embed", actions)
            add("online/predictor", predictor)
        tok, blocks = encoder_forward(cfg, level, full[level])
        add("target/patch_embed" if level == 0 else "target/abstraction", tok)
        add("target/encoder_blocks", blocks)
    online = sum(v for k, v in parts.items() if k.startswith("online/"))
    target = sum(v for k, v in parts.items() if k.startswith("target/"))
    return StepFlops(online, target, parts["online/patch_embed"] + parts["online/action_embed"], parts)


def mask_token_counts(masks: Sequence[LevelMasks]) -> tuple[list[int], list[int]]:
    """Per-level (context, target) tokens per clip of a batch's masks (``[B, Nc]``, ``[B, Nt]``)."""
    return [m.context.shape[1] for m in masks], [m.target.shape[1] for m in masks]


# Dense bf16 tensor-core peaks (TFLOP/s, datasheet, no sparsity) for MFU; matched on the device name.
# First match wins: the specific H100 variants come before plain "H100" (the SXM card, "H100 80GB HBM3").
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0}


def peak_bf16_flops(device_name: str) -> float | None:
    """The card's dense bf16 peak in FLOP/s from its name, or None for a card not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None
