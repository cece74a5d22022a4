"""Per-level context/target token sampling for Hierarchical JEPA.

A level's tokens form a grid (T, H, W) flattened time-major: i = t*H*W + h*W + w. Every sampler draws
with torch ops on the whole batch from an explicit `torch.Generator`, so masks are reproducible from a
seed alone (exact resume) and cheap enough to run in DataLoader workers.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

Grid = tuple[int, int, int]


@dataclass
class LevelMasks:
    """Token indices of one level. Rows are sorted, repeat-free, and context ∩ target = ∅ per sample."""

    context: torch.Tensor  # [B, Nc] int64
    target: torch.Tensor  # [B, Nt] int64


def _check_grid(grid: Any) -> Grid:
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be three positive ints (T, H, W), got {grid}")
    return (int(grid[0]), int(grid[1]), int(grid[2]))


def _check_range(name: str, r: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    if len(r) != 2 or not lo <= r[0] <= r[1] <= hi:
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {r}")
    return (float(r[0]), float(r[1]))


def _uniform(r: tuple[float, float], g: torch.Generator) -> float:
    """One scalar uniform in [r[0], r[1]] drawn from `g`."""
    return r[0] + (r[1] - r[0]) * torch.rand((), generator=g).item()


def _mask_to_indices(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[B, N] bool -> [B, k] sorted int64, k = min row count: each row keeps a uniformly random k-subset
    of its True entries, so every sample contributes the same number of tokens (batched attention)."""
    k = int(mask.sum(1).min())
    scores = torch.rand(mask.shape, generator=g).masked_fill_(~mask, -1.0)
    return scores.topk(k, dim=1).indices.sort(dim=1).values


def _to_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    """[B, k] indices -> [B, n] bool."""
    return torch.zeros(idx.shape[0], n, dtype=torch.bool).scatter_(1, idx, True)


class MultiblockSampler:
    """I-JEPA multi-block masking on a (T, H, W) grid, with its two defects fixed: scale and aspect are
    drawn independently, and block corners may sit on the last row/column.

    One target block shape and one context block shape per batch; `num_blocks` target blocks per sample
    at independent corners; target = their union; context = one square-ish block spanning all T minus
    the targets. `last_shapes` records the last draw (scales/aspect before rounding, realised h, w)."""

    max_tries = 20

    def __init__(
        self,
        grid: Grid,
        num_blocks: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        temporal_scale: tuple[float, float] = (1.0, 1.0),
        min_keep: int = 10,
    ) -> None:
        self.grid = _check_grid(grid)
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {min_keep}")
        self.num_blocks, self.min_keep = int(num_blocks), int(min_keep)
        self.target_scale = _check_range("target_scale", target_scale, 1e-9, 1.0)
        self.target_aspect = _check_range("target_aspect", target_aspect, 1e-9, math.inf)
        self.context_scale = _check_range("context_scale", context_scale, 1e-9, 1.0)
        self.temporal_scale = _check_range("temporal_scale", temporal_scale, 0.0, 1.0)
        self.last_shapes: dict[str, Any] = {}

    def _blocks(self, n: int, k: int, ext: Grid, g: torch.Generator) -> torch.Tensor:
        """[n, T*H*W] bool: union of k blocks of extent `ext` at uniform corners over all valid positions."""
        T, H, W = self.grid
        in_run = []
        for size, length in zip(self.grid, ext, strict=True):
            start = torch.randint(0, size - length + 1, (n, k, 1), generator=g)
            pos = torch.arange(size)
            in_run.append((pos >= start) & (pos < start + length))  # [n, k, size]
        m = in_run[0][..., :, None, None] & in_run[1][..., None, :, None] & in_run[2][..., None, None, :]
        return m.any(1).reshape(n, T * H * W)

    def _draw(
        self, n: int, t_ext: Grid, c_ext: Grid, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = self._blocks(n, self.num_blocks, t_ext, g)
        return target, self._blocks(n, 1, c_ext, g) & ~target

    def _room(self, target: torch.Tensor) -> torch.Tensor:
        """[n] how many context tokens a top-up could reach: non-targets, capped at min_keep."""
        return (~target).sum(1).clamp(max=self.min_keep)

    def sample(self, batch_size: int, generator: torch.Generator) -> LevelMasks:
        """Returns LevelMasks with context [B, Nc] and target [B, Nt]."""
        T, H, W = self.grid
        g, hw = generator, H * W
        ts, ta = _uniform(self.target_scale, g), _uniform(self.target_aspect, g)  # independent draws
        th = min(max(round(math.sqrt(ts * hw * ta)), 1), H)
        tw = min(max(round(math.sqrt(ts * hw / ta)), 1), W)
        tt = min(max(round(_uniform(self.temporal_scale, g) * T), 1), T)
        cs = _uniform(self.context_scale, g)
        ch, cw = min(max(round(math.sqrt(cs * hw)), 1), H), min(max(round(math.sqrt(cs * hw)), 1), W)
        self.last_shapes = dict(
            target_hw=(th, tw),
            target_scale=ts,
            target_aspect=ta,
            target_steps=tt,
            context_hw=(ch, cw),
            context_scale=cs,
        )
        target, context = self._draw(batch_size, (tt, th, tw), (T, ch, cw), g)
        for _ in range(self.max_tries):  # redraw corners of failing samples only
            bad = (context.sum(1) < self.min_keep).nonzero().squeeze(1)
            if bad.numel() == 0:
                break
            t, c = self._draw(bad.numel(), (tt, th, tw), (T, ch, cw), g)
            # keep a redraw unless it leaves fewer non-targets to top up from (e.g. targets tiling the grid)
            keep = self._room(t) >= self._room(target[bad])
            target[bad[keep]], context[bad[keep]] = t[keep], c[keep]
        need = (self.min_keep - context.sum(1)).clamp(min=0)
        if bool(need.any()):  # top up with random non-target tokens, never targets
            free = ~target & ~context
            order = torch.rand(free.shape, generator=g).masked_fill_(~free, -1.0).argsort(1, descending=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(free.shape[1]).expand_as(order))
            context |= free & (rank < need[:, None])
        if int(context.sum(1).min()) == 0:
            raise ValueError(
                f"multiblock masks leave no context token in some sample of grid {self.grid}: lower "
                f"target_scale={self.target_scale} or num_blocks={self.num_blocks}, or raise min_keep"
            )
        return LevelMasks(_mask_to_indices(context, g), _mask_to_indices(target, g))


class FutureSampler:
    """World-model objective: context = the first c time steps, target = steps from c-1+horizon on.

    One c per batch: c = clamp(round(f*T), 1, T-horizon), f ~ U(context_fraction). Targets span
    `target_steps` steps (None: through the end), clipped to T."""

    def __init__(
        self,
        grid: Grid,
        context_fraction: tuple[float, float] = (0.5, 0.5),
        horizon: int = 1,
        target_steps: int | None = None,
    ) -> None:
        self.grid = _check_grid(grid)
        T = self.grid[0]
        if T < 2:
            raise ValueError(f"future masking needs >= 2 time steps, grid {self.grid} has T={T}")
        if not 1 <= horizon <= T - 1:
            raise ValueError(f"horizon must be in [1, T-1={T - 1}] to leave a target, got {horizon}")
        if target_steps is not None and target_steps < 1:
            raise ValueError(f"target_steps must be >= 1 or None, got {target_steps}")
        self.context_fraction = _check_range("context_fraction", context_fraction, 0.0, 1.0)
        self.horizon, self.target_steps = int(horizon), target_steps

    def sample(self, batch_size: int, generator: torch.Generator) -> LevelMasks:
        """Returns LevelMasks with context [B, c*H*W] and target [B, steps*H*W], same for every sample."""
        T, H, W = self.grid
        c = min(max(round(_uniform(self.context_fraction, generator) * T), 1), T - self.horizon)
        start = c - 1 + self.horizon
        end = T if self.target_steps is None else min(T, start + self.target_steps)
        ctx = torch.arange(c * H * W).expand(batch_size, -1).contiguous()
        tgt = torch.arange(start * H * W, end * H * W).expand(batch_size, -1).contiguous()
        return LevelMasks(ctx, tgt)


class SegmentSampler:
    """Target = one contiguous run of time steps (length one per batch, start per sample); context = all
    other steps, before and after (temporal in-filling)."""

    def __init__(self, grid: Grid, segment_fraction: tuple[float, float] = (0.25, 0.5)) -> None:
        self.grid = _check_grid(grid)
        if self.grid[0] < 2:
            raise ValueError(f"segment masking needs >= 2 time steps, grid {self.grid} has T={self.grid[0]}")
        self.segment_fraction = _check_range("segment_fraction", segment_fraction, 0.0, 1.0)

    def sample(self, batch_size: int, generator: torch.Generator) -> LevelMasks:
        """Returns LevelMasks with context [B, (T-L)*H*W] and target [B, L*H*W]."""
        T, H, W = self.grid
        hw = H * W
        length = min(max(round(_uniform(self.segment_fraction, generator) * T), 1), T - 1)
        start = torch.randint(0, T - length + 1, (batch_size, 1), generator=generator)
        idx = torch.arange(T * hw).expand(batch_size, -1)
        in_seg = (idx >= start * hw) & (idx < (start + length) * hw)
        return LevelMasks(idx[~in_seg].view(batch_size, -1), idx[in_seg].view(batch_size, -1))


Sampler = MultiblockSampler | FutureSampler | SegmentSampler
_STRATEGIES: dict[str, type] = {
    "multiblock": MultiblockSampler,
    "future": FutureSampler,
    "segment": SegmentSampler,
}


def build_sampler(strategy: str, grid: Grid, **params: Any) -> Sampler:
    """Sampler for `strategy` in {"multiblock", "future", "segment"}; rejects unknown strategies/params."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose from {sorted(_STRATEGIES)}")
    cls = _STRATEGIES[strategy]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "grid"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for mask strategy {strategy!r}; allowed: {sorted(allowed)}"
        )
    return cls(grid, **params)


class HierarchicalMaskSampler:
    """Masks for a stack of levels, with no leakage into the online input.

    Only level 1's context is seen by an online path, so its context drops the level-1 footprint of every
    target of every level: level-l token (t, h, w) covers level-1 tokens (t', h, w) for
    t' in [t*strides[l], (t+1)*strides[l]). Higher levels' contexts are left as sampled."""

    def __init__(
        self, samplers: list[Sampler], grids: list[Grid], strides: list[int], min_keep: int = 10
    ) -> None:
        if not len(samplers) == len(grids) == len(strides) >= 1:
            raise ValueError(
                f"need one sampler, grid and stride per level, got {len(samplers)} samplers, "
                f"{len(grids)} grids, {len(strides)} strides"
            )
        self.grids = [_check_grid(gr) for gr in grids]
        if strides[0] != 1 or any(int(s) != s or s < 1 for s in strides):
            raise ValueError(f"strides must be positive ints with strides[0] == 1, got {strides}")
        T1, H, W = self.grids[0]
        for lvl, (gr, s, smp) in enumerate(zip(self.grids, strides, samplers, strict=True)):
            if gr[1:] != (H, W):
                raise ValueError(
                    f"grids must share one spatial size; level {lvl + 1} has {gr}, level 1 {self.grids[0]}"
                )
            if gr[0] * s != T1:
                raise ValueError(
                    f"grids/strides inconsistent at level {lvl + 1}: T={gr[0]} * stride={s} != level-1 T={T1}"
                )
            if tuple(smp.grid) != gr:
                raise ValueError(f"sampler of level {lvl + 1} has grid {smp.grid}, expected {gr}")
        self.samplers, self.strides, self.min_keep = list(samplers), [int(s) for s in strides], int(min_keep)
        self._warned = False

    def sample(self, batch_size: int, generator: torch.Generator) -> list[LevelMasks]:
        """One LevelMasks per level (finest first); level 1's context excludes all targets' footprints."""
        masks = [smp.sample(batch_size, generator) for smp in self.samplers]
        T1, H, W = self.grids[0]
        hw, n1 = H * W, T1 * H * W
        forbidden = torch.zeros(batch_size, n1, dtype=torch.bool)
        for m, s in zip(masks, self.strides, strict=True):
            t, pos = m.target // hw, m.target % hw  # [B, Nt]
            t1 = t[..., None] * s + torch.arange(s)  # [B, Nt, s]
            forbidden.scatter_(1, (t1 * hw + pos[..., None]).flatten(1), True)
        context = _to_mask(masks[0].context, n1) & ~forbidden
        fewest = int(context.sum(1).min())
        if fewest == 0:
            raise ValueError(
                "the masks of the levels leave no visible input: the level-1 footprints of the targets of "
                f"all levels cover the whole level-1 context of some sample (grids {self.grids}, strides "
                f"{self.strides}); use other mask settings, e.g. smaller targets or a longer future context"
            )
        if fewest < self.min_keep and not self._warned:  # once per sampler: not every step
            self._warned = True
            warnings.warn(
                f"level-1 context has only {fewest} < min_keep={self.min_keep} tokens after removing the "
                "footprints of all levels' targets",
                stacklevel=2,
            )
        masks[0] = LevelMasks(_mask_to_indices(context, generator), masks[0].target)
        return masks


class MaskCollator:
    """DataLoader collate_fn: stacks items and draws the batch's masks from seed and step alone.

    Items: {"clip": uint8 [T, C, H, W], "labels": {name: int}, "step": int, optional "actions": [T, A]}.
    Returns {"clips": [B, T, C, H, W], "labels": {name: int64 [B]}, "actions": [B, T, A] (if given),
    "masks": list[LevelMasks], "step": int}. A fresh generator per step makes masks independent of worker
    and history, which exact resume relies on."""

    def __init__(self, hier: HierarchicalMaskSampler, seed: int) -> None:
        self.hier, self.seed = hier, int(seed)

    def generator(self, step: int) -> torch.Generator:
        """The generator of `step`: seeded by a fixed, hash-free combination of seed and step."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) % 2**63)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        steps = {int(it["step"]) for it in items}
        if len(steps) != 1:
            raise ValueError(f"all items of a batch must carry the same step, got steps {sorted(steps)}")
        step = steps.pop()
        out: dict[str, Any] = {
            "clips": torch.stack([it["clip"] for it in items]),
            "labels": {
                k: torch.tensor([it["labels"][k] for it in items], dtype=torch.int64)
                for k in items[0]["labels"]
            },
        }
        if "actions" in items[0]:
            out["actions"] = torch.stack([it["actions"] for it in items])
        out["masks"] = self.hier.sample(len(items), self.generator(step))
        out["step"] = step
        return out
