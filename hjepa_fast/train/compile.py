"""Regional ``torch.compile`` for training (``train.compile=blocks``), applied to a finished model like
the ``parallelize`` functions.

Every transformer block is compiled in place. All blocks run one code object, so they share compiled
graphs: one per distinct (width, train/eval, cross-attention, stochastic depth on/off), about a dozen for
a 3-level model, each compiled once, with the token count dynamic (mask sizes change every step). Gathers,
masks, losses and our Triton kernels stay eager around them. Compiling once per block shape rather than
the whole forward keeps compilation short and free of graph breaks at the custom ops.
"""
from __future__ import annotations

import torch
from torch import nn

from hjepa_fast.model.transformer import Block

COMPILE_MODES = ("none", "blocks")
# enough graphs for every block shape of a model with a few levels, each seen in train and eval mode
RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Let Dynamo keep ``limit`` graphs per code object (its default, 8, is fewer than a 3-level model's
    block shapes: past it a block would run eagerly). The setting's name changed across torch versions."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


def compiled_blocks(model: nn.Module) -> list[Block]:
    """The model's transformer blocks, each once (``modules()`` yields a module shared between levels,
    ``model.share_encoders``, once)."""
    return [module for module in model.modules() if isinstance(module, Block)]


def apply_compile(model: nn.Module, mode: str, backend: str = "inductor") -> int:
    """Compile ``model``'s blocks in place for ``mode`` (``COMPILE_MODES``): parameter names, state dicts
    and hooks stay as they are. Returns the blocks compiled. ``backend``: Dynamo's (tests use
    ``aot_eager``: the same graphs, no code generation)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown train.compile {mode!r}; choose one of {COMPILE_MODES}")
    if mode == "none":
        return 0
    raise_recompile_limit()
    blocks = compiled_blocks(model)
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)
