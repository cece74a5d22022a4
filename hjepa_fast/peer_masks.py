"""Drop-in mask collators for I-JEPA and V-JEPA training loops: swap one import.

``VJEPAMaskCollator`` takes V-JEPA's multiblock-3d ``MaskCollator`` arguments (``cfgs_mask`` and the clip
geometry) and returns its layout; see its docstring.

``IJEPAMaskCollator`` takes I-JEPA's ``MaskCollator`` constructor arguments and returns its layout,
``(collated_batch, masks_enc, masks_pred)`` with ``masks_enc`` a list of ``nenc`` ``[B, K_enc]`` and
``masks_pred`` a list of ``npred`` ``[B, K_pred]`` int64 tensors (indices into the ``H*W`` patch grid).
The blocks come from ``MultiblockSampler`` (vectorised over the batch). Where our defaults differ on
purpose, ``compat="ijepa"`` selects I-JEPA's exact behaviour:

- block draw: ours draws scale and aspect independently and lets corners reach the last row/column;
  I-JEPA's draws both from one uniform and keeps blocks short of the last row/column (coverage bias);
- context count: ours gives every sample the batch's mean count (longer rows a random subset, shorter
  ones their tokens repeated evenly), so it does not shrink with the batch; I-JEPA keeps the first
  ``min`` indices of every row (the batch's smallest), as its ``cm[:min_keep_enc]`` does.

Both apply I-JEPA's relaxation: a context block left with ``<= min_keep`` tokens after ``max_tries``
redraws ignores the last target block, then the last two, and so on (so that context may overlap
targets, as in I-JEPA); ``allow_overlap=True`` never removes targets from the context.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import default_collate

from .masks import MultiblockSampler, _axis_runs, equal_count_indices


def row_indices(mask: torch.Tensor, g: torch.Generator, peer_trim: bool) -> torch.Tensor:
    """``[B, N]`` bool -> ``[B, k]`` indices: with ``peer_trim`` the first ``k = min`` row count indices of
    every row, as I-JEPA's and V-JEPA's collators trim; else the batch's mean count
    (``masks.equal_count_indices``)."""
    if peer_trim:
        k = int(mask.sum(1).min())
        return torch.stack([row.nonzero().squeeze(1)[:k] for row in mask])
    return equal_count_indices(mask, g)


class IJEPAMaskCollator:
    """I-JEPA's ``MaskCollator`` (same arguments and return layout); masks depend on (seed, call count)."""

    max_tries = 20

    def __init__(self, input_size: int | tuple[int, int] = (224, 224), patch_size: int = 16,
                 enc_mask_scale: tuple[float, float] = (0.2, 0.8), pred_mask_scale: tuple[float, float] = (0.2, 0.8),
                 aspect_ratio: tuple[float, float] = (0.3, 3.0), nenc: int = 1, npred: int = 2, min_keep: int = 4,
                 allow_overlap: bool = False, compat: str = "none", seed: int = 0) -> None:
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.height, self.width = size[0] // patch_size, size[1] // patch_size
        if nenc < 1 or npred < 1:
            raise ValueError(f"nenc and npred must be >= 1, got {nenc}, {npred}")
        self.sampler = MultiblockSampler((1, self.height, self.width), num_blocks=npred, target_scale=pred_mask_scale,
                                         target_aspect=aspect_ratio, context_scale=enc_mask_scale, min_keep=min_keep,
                                         compat=compat)
        self.nenc, self.npred, self.min_keep = int(nenc), int(npred), int(min_keep)
        self.allow_overlap, self.compat, self.seed, self.calls = bool(allow_overlap), compat, int(seed), 0

    def _context_block(self, n: int, hw: tuple[int, int], g: torch.Generator) -> torch.Tensor:
        """[n, H*W] bool: one block of size hw per row."""
        starts = self.sampler._corners(n, 1, (1, *hw), g)[1:]
        rows, cols = (_axis_runs(s, e, size) for s, e, size in zip(starts, hw, (self.height, self.width)))
        return (rows[..., :, None] & cols[..., None, :]).flatten(1)

    def _context(self, blocks: torch.Tensor, hw: tuple[int, int], g: torch.Generator) -> torch.Tensor:
        """[B, H*W] bool: one context block per sample minus the target blocks (all of them where it keeps
        > min_keep tokens, else I-JEPA's relaxation: fewer, dropping the last ones first)."""
        B, n = blocks.shape[0], self.height * self.width
        if self.allow_overlap:
            return self._context_block(B, hw, g)
        # allowed[r]: outside the first npred - r target blocks (r = 0: all of them; r = npred: anywhere)
        allowed = [~torch.zeros(B, n, dtype=torch.bool).scatter_(1, blocks[:, : self.npred - r].flatten(1), True)
                   for r in range(self.npred)] + [torch.ones(B, n, dtype=torch.bool)]
        ctx = torch.zeros(B, n, dtype=torch.bool)
        todo = torch.arange(B)
        for relax in range(self.npred + 1):
            for _ in range(self.max_tries):
                if todo.numel() == 0:
                    return ctx
                cand = self._context_block(todo.numel(), hw, g) & allowed[relax][todo]
                ok = cand.sum(1) > self.min_keep
                ctx[todo[ok]] = cand[ok]
                todo = todo[~ok]
        ctx[todo] = self._context_block(todo.numel(), hw, g)  # no constraint left: the whole block
        return ctx


    def __call__(self, batch: list[Any]) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
        B = len(batch)
        collated = default_collate(batch)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.calls) % 2**63)
        self.calls += 1
        shapes = self.sampler.shapes(g)
        h, w = shapes["target_hw"]
        target = self.sampler._targets(B, (1, h, w), g)  # [B, npred * h * w]: whole blocks
        blocks = target.view(B, self.npred, h * w)
        masks_pred = list(blocks.unbind(1))
        trim = self.compat == "ijepa"
        masks_enc = [row_indices(self._context(blocks, shapes["context_hw"], g), g, trim) for _ in range(self.nenc)]
        return collated, masks_enc, masks_pred


class VJEPAMaskCollator:
    """V-JEPA's multiblock-3d ``MaskCollator``: same arguments, same return layout
    ``(collated_batch, masks_enc, masks_pred)``, each a list with one ``[B, K]`` int64 tensor per entry of
    ``cfgs_mask`` (indices into the ``T*H*W`` token grid, ``T = num_frames // tubelet_size``).

    Per config and batch one block size is drawn (``temporal_scale``, ``spatial_scale``,
    ``aspect_ratio``: ``t = max(1, int(T*ts))``, ``n = int(H*W*ss)``, ``h, w = round(sqrt(n*a)),
    round(sqrt(n/a))`` clipped to the grid); each sample places ``num_blocks`` such boxes at random; the
    targets are their union, the context everything else within the first ``max_temporal_keep`` of the
    clip (tokens past it are targets too). A sample left without context is drawn again.

    Row counts differ between samples (boxes overlap). V-JEPA keeps the first ``min`` indices of every row,
    so coverage shrinks as the batch grows; ours (``compat="none"``) gives every row the batch's mean
    count (``masks.equal_count_indices``); ``compat="vjepa"`` trims as V-JEPA does. Masks depend on
    (seed, call count, config index)."""

    def __init__(self, cfgs_mask: list[dict], crop_size: int | tuple[int, int] = (224, 224), num_frames: int = 16,
                 patch_size: int | tuple[int, int] = 16, tubelet_size: int = 2, compat: str = "none",
                 seed: int = 0) -> None:
        if compat not in ("none", "vjepa"):
            raise ValueError(f"compat must be 'none' or 'vjepa', got {compat!r}")
        crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.grid = (num_frames // tubelet_size, crop[0] // patch[0], crop[1] // patch[1])
        if min(self.grid) < 1:
            raise ValueError(f"the token grid {self.grid} is empty: num_frames, crop_size and patch_size too small")
        self.cfgs = [self._check(i, cfg) for i, cfg in enumerate(cfgs_mask)]
        self.compat, self.seed, self.calls = compat, int(seed), 0

    @staticmethod
    def _check(index: int, cfg: dict) -> dict:
        need = ("spatial_scale", "temporal_scale", "aspect_ratio", "num_blocks")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise ValueError(f"cfgs_mask[{index}] lacks {missing} (V-JEPA's keys: {need}, max_temporal_keep)")
        return {**cfg, "max_temporal_keep": cfg.get("max_temporal_keep", 1.0)}

    def _block_size(self, cfg: dict, g: torch.Generator) -> tuple[int, int, int]:
        T, H, W = self.grid
        u = torch.rand(3, generator=g).tolist()
        lerp = lambda r, x: r[0] + x * (r[1] - r[0])  # noqa: E731
        t = max(1, int(T * lerp(cfg["temporal_scale"], u[0])))
        n = int(H * W * lerp(cfg["spatial_scale"], u[1]))
        a = lerp(cfg["aspect_ratio"], u[2])
        return t, min(int(round(math.sqrt(n * a))), H), min(int(round(math.sqrt(n / a))), W)

    def _targets(self, B: int, cfg: dict, size: tuple[int, int, int], g: torch.Generator) -> torch.Tensor:
        """[B, T*H*W] bool: the union of ``num_blocks`` boxes per sample, plus every step past the context's
        time limit; samples whose context would be empty are drawn again."""
        T, H, W = self.grid
        keep_steps = max(1, int(T * cfg["max_temporal_keep"]))
        out = torch.zeros(B, T * H * W, dtype=torch.bool)
        todo = torch.arange(B)
        while todo.numel():
            n, k = todo.numel(), int(cfg["num_blocks"])
            axes = [_axis_runs(torch.randint(0, full - part + 1, (n, k, 1), generator=g), part, full)
                    for part, full in zip(size, self.grid)]  # [n, k, T], [n, k, H], [n, k, W]
            boxes = axes[0][..., :, None, None] & axes[1][..., None, :, None] & axes[2][..., None, None, :]
            covered = boxes.any(1)  # [n, T, H, W]
            covered[:, keep_steps:] = True
            covered = covered.flatten(1)
            ok = ~covered.all(1)
            out[todo[ok]] = covered[ok]
            todo = todo[~ok]
        return out


    def __call__(self, batch: list[Any]) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
        B = len(batch)
        collated = default_collate(batch)
        masks_enc, masks_pred = [], []
        for index, cfg in enumerate(self.cfgs):
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.calls) * 101 + index) % 2**63)
            target = self._targets(B, cfg, self._block_size(cfg, g), g)
            masks_enc.append(row_indices(~target, g, self.compat == "vjepa"))
            masks_pred.append(row_indices(target, g, self.compat == "vjepa"))
        self.calls += 1
        return collated, masks_enc, masks_pred
