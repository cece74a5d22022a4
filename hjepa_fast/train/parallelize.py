"""Functions applied TO a finished HJEPA (torchtitan style): the model files know nothing of them.

- ``apply_activation_checkpointing``: recompute chosen levels' transformer blocks in backward;
- ``apply_fsdp``: FSDP2 (``fully_shard``) per block, per level, then the root; each target encoder is
  sharded exactly like its online encoder, so the EMA lerps matching local shards;
- ``detach_targets``: take the EMA target encoders out of the module tree (DeepSpeed keeps them outside
  its engine, in fp32, never trained).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hjepa_fast.config import ConfigError
from hjepa_fast.model.hjepa import HJEPA


def checkpoint_block(block: nn.Module) -> None:
    """Make ``block`` recompute its forward in backward (torch.utils.checkpoint, non-reentrant).

    The instance's ``forward`` is replaced, not the module wrapped: parameter names and state dicts stay
    the same with checkpointing on or off, and hooks that engines put on the module (FSDP2, ZeRO-3) still
    run around it, as with torchtitan's wrapper placed inside ``fully_shard``."""
    if getattr(block, "_hjepa_checkpointed", False):
        return
    inner = block.forward

    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward
    block._hjepa_checkpointed = True


def apply_activation_checkpointing(model: HJEPA, levels: Sequence[bool]) -> int:
    """Checkpoint every transformer block of the online encoder and the predictor of each level whose
    flag is True (the target encoders run under no_grad and save nothing). Returns the distinct blocks
    wrapped. With ``model.share_encoders`` the encoder blocks are level 1's at every level: one level's
    flag checkpoints them wherever they run, and each is wrapped (and counted) once."""
    if len(levels) != model.levels:
        raise ValueError(f"activation_checkpointing needs one flag per level ({model.levels}), got {list(levels)}")
    blocks = {}  # id -> block: a shared block once
    for on, encoder, predictor in zip(levels, model.encoders, model.predictors):
        if on:
            blocks.update((id(b), b) for b in (*encoder.blocks, *predictor.blocks))
    for block in blocks.values():
        checkpoint_block(block)
    return len(blocks)


def apply_fsdp(model: HJEPA, mesh, mp_policy=None) -> HJEPA:
    """Shard ``model`` with FSDP2 over ``mesh`` (1-d, data parallel), in place.

    Units: each transformer block, then each level's encoder / target encoder / predictor, then the root
    (loss weights). Target encoders get ``reshard_after_forward=True`` explicitly: they only ever run a
    no-grad forward, after which a unit left unsharded would keep the full parameters alive.

    Refuses ``model.share_encoders``: the per-level units would shard level 1's blocks and norm again."""
    from torch.distributed.fsdp import fully_shard

    if model.cfg.share_encoders:
        raise ConfigError("model.share_encoders=true does not work with train.engine=fsdp (shared blocks would "
                          "be sharded once per level): use train.engine=ddp, deepspeed or single")

    # the predictors return a view ([B, Nt, D] of a wider token sequence); nothing writes to it in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPPredictor\) returned a view")
    kw = {"mesh": mesh} if mp_policy is None else {"mesh": mesh, "mp_policy": mp_policy}
    for online, target, predictor in zip(model.encoders, model.target_encoders, model.predictors):
        for module in (online, target):
            for block in module.blocks:
                fully_shard(block, reshard_after_forward=True, **kw)
            fully_shard(module, reshard_after_forward=True, **kw)
        for block in predictor.blocks:
            fully_shard(block, **kw)
        fully_shard(predictor, **kw)
    fully_shard(model, **kw)
    return model


def detach_targets(model: HJEPA) -> nn.ModuleList:
    """Remove ``model.target_encoders`` from the module tree but keep the attribute: ``model.parameters()``
    and ``model.state_dict()`` then hold the online parts only, while ``model.forward`` still runs the
    targets. Returns the target encoders (the caller saves them)."""
    targets = model._modules.pop("target_encoders")
    object.__setattr__(model, "target_encoders", targets)
    return targets
