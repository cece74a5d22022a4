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
    """Token indices of one level, equal in count across the batch by construction (never thinned to the
    batch's smallest sample, so what a clip contributes does not depend on the batch size).

    target [B, Nt] int64: the level's target blocks one after another, each block's indices ascending; a
    token in two blocks appears twice and is scored twice, as I-JEPA scores each block on its own.
    context [B, Nc] int64, ascending: Nc is the batch's mean context count; a sample with more keeps a
    random Nc-subset, one with fewer repeats each of its c tokens evenly (floor or ceil of Nc/c times),
    which leaves softmax attention over them unchanged up to that rounding. context ∩ target = ∅."""

    context: torch.Tensor  # [B, Nc] int64
    target: torch.Tensor  # [B, Nt] int64

    def pin_memory(self) -> LevelMasks:
        """Page-locked copies (a DataLoader with ``pin_memory`` calls this): a non-blocking copy to the GPU
        from them does not wait for the work already queued there."""
        return LevelMasks(self.context.pin_memory(), self.target.pin_memory())


def _check_grid(grid: Any) -> Grid:
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be three positive ints (T, H, W), got {grid}")
    return (int(grid[0]), int(grid[1]), int(grid[2]))


def _check_range(name: str, r: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    if len(r) != 2 or not lo <= r[0] <= r[1] <= hi:
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {r}")
    return (float(r[0]), float(r[1]))


def _uniform(r: tuple[float, float], g: torch.Generator, u: float | None = None) -> float:
    """One scalar uniform in [r[0], r[1]] drawn from `g` (or placed at `u` in [0, 1))."""
    u = torch.rand((), generator=g).item() if u is None else u
    return r[0] + (r[1] - r[0]) * u


def equal_count_indices(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[B, N] bool -> [B, k] sorted int64 with k = round(mean row count): the equal-count rule of
    `LevelMasks.context`. Rows with >= k entries keep a random k-subset; shorter rows repeat their entries
    evenly. Rows of equal count pass through without drawing from `g`."""
    counts = mask.sum(1)
    if int(counts.min()) == 0:
        raise ValueError("equal_count_indices: a row has no True entry")
    B = mask.shape[0]
    if bool((counts == counts[0]).all()):
        return mask.nonzero()[:, 1].view(B, -1)
    k = max(1, round(float(counts.double().mean())))
    # a row's entries come first, in random order; a row with c < k has exactly c of them
    order = torch.rand(mask.shape, generator=g).masked_fill_(~mask, -1.0).topk(k, dim=1).indices
    slot = torch.arange(k) % counts.clamp(max=k)[:, None]  # [B, k]: the row's own entries, cycled
    return order.gather(1, slot).sort(1).values


def _to_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    """[B, k] indices -> [B, n] bool."""
    return torch.zeros(idx.shape[0], n, dtype=torch.bool).scatter_(1, idx, True)


def _axis_runs(starts: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """starts [..., 1] -> [..., size] bool: positions in [start, start + length)."""
    pos = torch.arange(size)
    return (pos >= starts) & (pos < starts + length)


class MultiblockSampler:
    """I-JEPA multi-block masking on a (T, H, W) grid.

    One target block shape and one context block shape per batch; `num_blocks` target blocks per sample
    at independent corners, each kept whole (`LevelMasks.target` concatenates them); context = one
    square-ish block spanning all T minus the targets. By default two defects of I-JEPA's sampler are
    fixed: scale and aspect are drawn independently, and block corners may sit on the last row/column;
    `compat="ijepa"` restores its exact draw (one uniform for scale and aspect, area floored, h < H,
    w < W, corners short of the last row/column). `last_shapes` records the last draw."""

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
        compat: str = "none",
    ) -> None:
        self.grid = _check_grid(grid)
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {min_keep}")
        if compat not in ("none", "ijepa"):
            raise ValueError(f"compat must be 'none' or 'ijepa', got {compat!r}")
        if compat == "ijepa" and min(self.grid[1:]) < 2:
            raise ValueError(f"compat='ijepa' keeps blocks short of the last row/column: needs H, W >= 2, got {grid}")
        self.num_blocks, self.min_keep, self.compat = int(num_blocks), int(min_keep), compat
        self.target_scale = _check_range("target_scale", target_scale, 1e-9, 1.0)
        self.target_aspect = _check_range("target_aspect", target_aspect, 1e-9, math.inf)
        self.context_scale = _check_range("context_scale", context_scale, 1e-9, 1.0)
        self.temporal_scale = _check_range("temporal_scale", temporal_scale, 0.0, 1.0)
        self.last_shapes: dict[str, Any] = {}

    def _block_hw(self, scale: tuple[float, float], aspect: tuple[float, float], g: torch.Generator):
        """(h, w, s, a): one block size; I-JEPA's rule under compat='ijepa', independent draws otherwise."""
        H, W = self.grid[1:]
        if self.compat == "ijepa":
            u = torch.rand((), generator=g).item()
            s, a = _uniform(scale, g, u), _uniform(aspect, g, u)
            area = int(H * W * s)
            h, w = round(math.sqrt(area * a)), round(math.sqrt(area / a))
            return min(max(h, 1), H - 1), min(max(w, 1), W - 1), s, a
        s, a = _uniform(scale, g), _uniform(aspect, g)
        h, w = round(math.sqrt(s * H * W * a)), round(math.sqrt(s * H * W / a))
        return min(max(h, 1), H), min(max(w, 1), W), s, a

    def shapes(self, g: torch.Generator) -> dict[str, Any]:
        """The batch's block shapes (drawn before any per-sample draw, so they depend on `g` alone)."""
        T = self.grid[0]
        th, tw, ts, ta = self._block_hw(self.target_scale, self.target_aspect, g)
        tt = min(max(round(_uniform(self.temporal_scale, g) * T), 1), T)
        ch, cw, cs, _ = self._block_hw(self.context_scale, (1.0, 1.0), g)
        return dict(target_hw=(th, tw), target_scale=ts, target_aspect=ta, target_steps=tt,
                    context_hw=(ch, cw), context_scale=cs)

    def _corners(self, n: int, k: int, ext: Grid, g: torch.Generator) -> list[torch.Tensor]:
        """Per axis [n, k, 1] block starts, uniform over the valid range (short of the last spatial
        position under compat='ijepa')."""
        short = (0, 1, 1) if self.compat == "ijepa" else (0, 0, 0)
        return [torch.randint(0, size - length + 1 - cut, (n, k, 1), generator=g)
                for size, length, cut in zip(self.grid, ext, short, strict=True)]

    def _union(self, starts: list[torch.Tensor], ext: Grid) -> torch.Tensor:
        """[n, T*H*W] bool: the union of the blocks at `starts`."""
        r = [_axis_runs(s, e, size) for s, e, size in zip(starts, ext, self.grid, strict=True)]
        m = r[0][..., :, None, None] & r[1][..., None, :, None] & r[2][..., None, None, :]
        return m.any(1).flatten(1)

    def _targets(self, n: int, ext: Grid, g: torch.Generator) -> torch.Tensor:
        """[n, num_blocks * prod(ext)] int64: whole blocks at uniform corners, one after another."""
        _, H, W = self.grid
        offs = [s + torch.arange(e) for s, e in zip(self._corners(n, self.num_blocks, ext, g), ext, strict=True)]
        return ((offs[0][..., :, None, None] * H + offs[1][..., None, :, None]) * W
                + offs[2][..., None, None, :]).flatten(1)

    def _context(self, n: int, ext: Grid, target: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self._union(self._corners(n, 1, ext, g), ext) & ~target

    def draw(self, batch_size: int, shapes: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, T*H*W] bool, target [B, num_blocks*tt*th*tw] int64) for the given shapes.

        Targets are redrawn only where they leave fewer than min_keep tokens outside them (never in
        I-JEPA's 14 x 14 setting: 4 blocks of at most 42 tokens leave 28): a redraw favours overlapping blocks and
        so lowers the coverage. Samples whose context has fewer than min_keep tokens redraw the context
        block, then top up with random non-target tokens."""
        T, H, W = self.grid
        (th, tw), tt, (ch, cw) = shapes["target_hw"], shapes["target_steps"], shapes["context_hw"]
        t_ext, c_ext = (tt, th, tw), (T, ch, cw)
        target = self._targets(batch_size, t_ext, g)
        covered = _to_mask(target, T * H * W)
        for _ in range(self.max_tries):
            bad = ((~covered).sum(1) < self.min_keep).nonzero().squeeze(1)
            if bad.numel() == 0:
                break
            redraw = self._targets(bad.numel(), t_ext, g)
            mask = _to_mask(redraw, T * H * W)
            better = mask.sum(1) < covered[bad].sum(1)
            target[bad[better]], covered[bad[better]] = redraw[better], mask[better]
        context = self._context(batch_size, c_ext, covered, g)
        for _ in range(self.max_tries):
            bad = (context.sum(1) < self.min_keep).nonzero().squeeze(1)
            if bad.numel() == 0:
                break
            redraw = self._context(bad.numel(), c_ext, covered[bad], g)
            better = redraw.sum(1) > context[bad].sum(1)
            context[bad[better]] = redraw[better]
        need = (self.min_keep - context.sum(1)).clamp(min=0)
        if bool(need.any()):  # top up with random non-target tokens, never targets
            free = ~covered & ~context
            order = torch.rand(free.shape, generator=g).masked_fill_(~free, -1.0).argsort(1, descending=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(free.shape[1]).expand_as(order))
            context |= free & (rank < need[:, None])
        if int(context.sum(1).min()) == 0:
            raise ValueError(
                f"multiblock masks leave no context token in some sample of grid {self.grid}: lower "
                f"target_scale={self.target_scale} or num_blocks={self.num_blocks}, or raise min_keep"
            )
        return context, target

    def sample(self, batch_size: int, generator: torch.Generator) -> LevelMasks:
        """Returns LevelMasks with context [B, Nc] and target [B, num_blocks*tt*th*tw]."""
        self.last_shapes = self.shapes(generator)
        context, target = self.draw(batch_size, self.last_shapes, generator)
        return LevelMasks(equal_count_indices(context, generator), target)


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

    def shapes(self, g: torch.Generator) -> dict[str, Any]:
        """The batch's context length in steps (one per batch)."""
        c = min(max(round(_uniform(self.context_fraction, g) * self.grid[0]), 1), self.grid[0] - self.horizon)
        return {"context_steps": c}

    def draw(self, batch_size: int, shapes: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, T*H*W] bool, target [B, steps*H*W] int64), the same for every sample."""
        T, H, W = self.grid
        c = shapes["context_steps"]
        start = c - 1 + self.horizon
        end = T if self.target_steps is None else min(T, start + self.target_steps)
        context = (torch.arange(T * H * W) < c * H * W).expand(batch_size, -1).contiguous()
        return context, torch.arange(start * H * W, end * H * W).expand(batch_size, -1).contiguous()

    def sample(self, batch_size: int, generator: torch.Generator) -> LevelMasks:
        """Returns LevelMasks with context [B, c*H*W] and target [B, steps*H*W], same for every sample."""
        context, target = self.draw(batch_size, self.shapes(generator), generator)
        return LevelMasks(equal_count_indices(context, generator), target)


class SegmentSampler:
    """Target = one contiguous run of time steps (length one per batch, start per sample); context = all
    other steps, before and after (temporal in-filling)."""

    def __init__(self, grid: Grid, segment_fraction: tuple[float, float] = (0.25, 0.5)) -> None:
        self.grid = _check_grid(grid)
        if self.grid[0] < 2:
            raise ValueError(f"segment masking needs >= 2 time steps, grid {self.grid} has T={self.grid[0]}")
        self.segment_fraction = _check_range("segment_fraction", segment_fraction, 0.0, 1.0)

    def shapes(self, g: torch.Generator) -> dict[str, Any]:
        """The batch's segment length in steps (one per batch)."""
        T = self.grid[0]
        return {"segment_steps": min(max(round(_uniform(self.segment_fraction, g) * T), 1), T - 1)}

    def draw(self, batch_size: int, shapes: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [B, T*H*W] bool, target [B, L*H*W] int64): one segment start per sample."""
        T, H, W = self.grid
        hw, length = H * W, shapes["segment_steps"]
        start = torch.randint(0, T - length + 1, (batch_size, 1), generator=g)
        idx = torch.arange(T * hw).expand(batch_size, -1)
        in_seg = (idx >= start * hw) & (idx < (start + length) * hw)
        return ~in_seg, idx[in_seg].view(batch_size, -1)

    def sample(self, batch_size: int, generator: torch.Generator) -> LevelMasks:
        """Returns LevelMasks with context [B, (T-L)*H*W] and target [B, L*H*W]."""
        context, target = self.draw(batch_size, self.shapes(generator), generator)
        return LevelMasks(equal_count_indices(context, generator), target)


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
    t' in [t*strides[l], (t+1)*strides[l]). Higher levels' contexts are left as sampled. `max_tries`:
    redraws of a sample that this rule leaves with fewer than min_keep level-1 context tokens."""

    max_tries = 20

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
        self._warned, self.last_redrawn = False, 0

    def _visible(self, drawn: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """[B, T1*H*W] bool: level 1's drawn context minus the level-1 footprint of every level's targets."""
        B = drawn[0][0].shape[0]
        forbidden = torch.zeros(B, math.prod(self.grids[0]), dtype=torch.bool)
        for (_, target), (T, H, W), s in zip(drawn, self.grids, self.strides, strict=True):
            own = _to_mask(target, T * H * W).view(B, T, 1, H * W)  # level l's grid, then s level-1 steps each
            forbidden |= own.expand(B, T, s, H * W).reshape(B, -1)
        return drawn[0][0] & ~forbidden

    def sample(self, batch_size: int, generator: torch.Generator) -> list[LevelMasks]:
        """One LevelMasks per level (finest first); level 1's context excludes all targets' footprints.

        Every level's shapes are drawn first, so they depend on the generator alone, not the batch size.
        A sample left with fewer than min_keep visible level-1 tokens redraws all its levels' blocks (same
        shapes; up to max_tries times; `last_redrawn` counts these redraws)."""
        shapes = [smp.shapes(generator) for smp in self.samplers]
        drawn = [smp.draw(batch_size, sh, generator) for smp, sh in zip(self.samplers, shapes, strict=True)]
        context = self._visible(drawn)
        self.last_redrawn = 0
        for _ in range(self.max_tries):  # redraw every level of a sample left with < min_keep visible tokens
            bad = (context.sum(1) < self.min_keep).nonzero().squeeze(1)
            if bad.numel() == 0:
                break
            self.last_redrawn += bad.numel()
            again = [smp.draw(bad.numel(), sh, generator) for smp, sh in zip(self.samplers, shapes, strict=True)]
            better = self._visible(again).sum(1) > context[bad].sum(1)
            for (c, t), (c2, t2) in zip(drawn, again, strict=True):
                c[bad[better]], t[bad[better]] = c2[better], t2[better]
            context = self._visible(drawn)
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
        contexts = [context] + [c for c, _ in drawn[1:]]
        return [LevelMasks(equal_count_indices(c, generator), t) for c, (_, t) in zip(contexts, drawn, strict=True)]


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
