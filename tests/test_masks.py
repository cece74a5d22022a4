import math
import pickle

import pytest
import torch

from hjepa_fast.masks import (
    FutureSampler,
    HierarchicalMaskSampler,
    LevelMasks,
    MaskCollator,
    MultiblockSampler,
    SegmentSampler,
    build_sampler,
)

GRIDS = [(3, 5, 7), (8, 4, 4), (4, 14, 14)]
HIER_GRIDS = [(8, 4, 4), (4, 4, 4), (2, 4, 4)]
STRIDES = [1, 2, 4]


@pytest.fixture(autouse=True)
def one_thread():
    """Masks are drawn in DataLoader workers, which run one torch thread; small ops on several threads
    of a busy machine run 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_masks(m: LevelMasks, grid: tuple[int, int, int], batch: int, blocks: int = 1) -> None:
    """Equal counts, in range, context ascending, each of `blocks` target blocks ascending without
    repeats, context and targets disjoint; a short context row repeats its tokens evenly."""
    n = math.prod(grid)
    for idx in (m.context, m.target):
        assert idx.dtype == torch.int64 and idx.dim() == 2 and idx.shape[0] == batch and idx.shape[1] >= 1
        assert idx.min() >= 0 and idx.max() < n
    assert (m.context.diff(dim=1) >= 0).all(), "context rows must be sorted ascending"
    assert m.target.shape[1] % blocks == 0
    for block in m.target.chunk(blocks, dim=1):
        assert (block.diff(dim=1) > 0).all(), "each target block ascending without repeats"
    for c, t in zip(m.context.tolist(), m.target.tolist(), strict=True):
        assert not set(c) & set(t)
        reps = torch.unique(torch.tensor(c), return_counts=True)[1]
        assert int(reps.max()) - int(reps.min()) <= 1, "a short context row repeats its tokens evenly"


def times(idx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    return idx // (grid[1] * grid[2])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("strategy", ["multiblock", "future", "segment"])
def test_sampler_invariants(strategy, grid):
    sampler = build_sampler(strategy, grid)
    blocks = sampler.num_blocks if strategy == "multiblock" else 1
    for seed in range(5):
        check_masks(sampler.sample(6, gen(seed)), grid, 6, blocks)


def test_multiblock_single_frame_and_deterministic():
    sampler = MultiblockSampler((1, 14, 14))
    a, b = sampler.sample(4, gen(3)), sampler.sample(4, gen(3))
    check_masks(a, (1, 14, 14), 4, blocks=4)
    assert torch.equal(a.context, b.context) and torch.equal(a.target, b.target)
    assert not torch.equal(a.target, sampler.sample(4, gen(4)).target)


def test_multiblock_statistics():
    H = W = 14
    sampler = MultiblockSampler((1, H, W))
    ts, ta, cs = [], [], []
    last_row = last_col = first_row = first_col = False
    for seed in range(300):
        m = sampler.sample(8, gen(seed))
        s = sampler.last_shapes
        ts.append(s["target_scale"])
        ta.append(s["target_aspect"])
        cs.append(s["context_scale"])
        assert 0.15 <= s["target_scale"] <= 0.2 and 0.75 <= s["target_aspect"] <= 1.5
        assert 0.85 <= s["context_scale"] <= 1.0
        # h = round(x), w = round(y) with x*y = scale*H*W, each off by at most 0.5 (then clamped):
        x = math.sqrt(s["target_scale"] * H * W * s["target_aspect"])
        y = math.sqrt(s["target_scale"] * H * W / s["target_aspect"])
        h, w = s["target_hw"]
        assert max(x - 0.5, 1) <= h <= min(x + 0.5, H) and max(y - 0.5, 1) <= w <= min(y + 0.5, W)
        lo, hi = max(x - 0.5, 1) * max(y - 0.5, 1), min(x + 0.5, H) * min(y + 0.5, W)
        assert lo <= h * w <= hi
        # over the whole parameter box, x + y is largest at extreme aspects, so area/(H*W) lies in
        # [s - (x+y)/2/HW + 1/4/HW, s + (x+y)/2/HW + 1/4/HW] with the extreme s and max x+y:
        sum_max = math.sqrt(0.2 * H * W) * max(math.sqrt(a) + 1 / math.sqrt(a) for a in (0.75, 1.5))
        assert (
            0.15 - (sum_max / 2 - 0.25) / (H * W) <= h * w / (H * W) <= 0.2 + (sum_max / 2 + 0.25) / (H * W)
        )
        c = math.sqrt(s["context_scale"] * H * W)
        assert all(max(c - 0.5, 1) <= e <= min(c + 0.5, H) for e in s["context_hw"])
        assert m.context.shape[1] >= 10
        rows, cols = m.target // W, m.target % W
        last_row |= bool((rows == H - 1).any())
        last_col |= bool((cols == W - 1).any())
        first_row |= bool((rows == 0).any())
        first_col |= bool((cols == 0).any())
    assert last_row and last_col and first_row and first_col
    corr = torch.corrcoef(torch.tensor([ts, ta], dtype=torch.float64))[0, 1]
    assert abs(corr) < 0.2, f"scale and aspect correlated: {corr}"
    for v, (lo, hi) in ((ts, (0.15, 0.2)), (ta, (0.75, 1.5)), (cs, (0.85, 1.0))):
        v = torch.tensor(v)
        assert v.min() < lo + 0.1 * (hi - lo) and v.max() > hi - 0.1 * (hi - lo), "draws must cover the range"


def test_multiblock_one_block_shape_per_batch():
    T, H, W = 4, 9, 11
    sampler = MultiblockSampler((T, H, W), num_blocks=1, temporal_scale=(0.5, 0.5))
    for seed in range(10):
        m = sampler.sample(6, gen(seed))
        h, w = sampler.last_shapes["target_hw"]
        steps = sampler.last_shapes["target_steps"]
        assert steps == 2 and m.target.shape[1] == h * w * steps
        for row in m.target:
            t, r, c = row // (H * W), row // W % H, row % W
            assert (t.max() - t.min() + 1, r.max() - r.min() + 1, c.max() - c.min() + 1) == (steps, h, w)


def test_multiblock_tops_up_context_without_targets():
    # a 2x2 context block never holds min_keep=10 tokens: the top-up must add non-target tokens
    sampler = MultiblockSampler((1, 6, 6), context_scale=(0.1, 0.1), min_keep=10)
    for seed in range(10):
        m = sampler.sample(8, gen(seed))
        check_masks(m, (1, 6, 6), 8, blocks=4)
        assert m.context.shape[1] == 10


def test_multiblock_no_context_left_raises():
    with pytest.raises(ValueError, match="target_scale"):
        MultiblockSampler((1, 2, 2), target_scale=(1.0, 1.0)).sample(2, gen(0))


@pytest.mark.parametrize(
    "fraction,horizon,target_steps", [((0.5, 0.5), 1, None), ((0.2, 0.8), 2, None), ((0.0, 1.0), 3, 2)]
)
def test_future_times(fraction, horizon, target_steps):
    grid = (8, 3, 5)
    sampler = FutureSampler(grid, context_fraction=fraction, horizon=horizon, target_steps=target_steps)
    seen_c = set()
    for seed in range(20):
        m = sampler.sample(4, gen(seed))
        check_masks(m, grid, 4)
        ct, tt = times(m.context, grid), times(m.target, grid)
        c = int(ct.max()) + 1
        seen_c.add(c)
        assert 1 <= c <= 8 - horizon and torch.equal(ct.unique(), torch.arange(c))
        assert m.context.shape[1] == c * 15  # all tokens of the context steps
        end = 8 if target_steps is None else min(8, c - 1 + horizon + target_steps)
        assert torch.equal(tt.unique(), torch.arange(c - 1 + horizon, end))
        assert m.target.shape[1] == (end - c + 1 - horizon) * 15
    if fraction == (0.5, 0.5):
        assert seen_c == {4}
    else:
        assert len(seen_c) > 1


def test_future_rejects_bad_grids():
    with pytest.raises(ValueError, match="time steps"):
        FutureSampler((1, 4, 4))
    with pytest.raises(ValueError, match="horizon"):
        FutureSampler((4, 4, 4), horizon=4)
    with pytest.raises(ValueError, match="context_fraction"):
        FutureSampler((4, 4, 4), context_fraction=(0.6, 0.5))


def test_segment_contiguous():
    grid = (8, 3, 3)
    sampler = SegmentSampler(grid)
    starts, ends = set(), set()
    for seed in range(30):
        m = sampler.sample(8, gen(seed))
        check_masks(m, grid, 8)
        assert m.context.shape[1] + m.target.shape[1] == 72  # context = every other step
        length = m.target.shape[1] // 9
        assert 2 <= length <= 4  # round(f*8), f in [0.25, 0.5]
        for row in times(m.target, grid):
            steps = row.unique()
            assert len(steps) == length and torch.equal(steps, torch.arange(steps[0], steps[0] + length))
            starts.add(int(steps[0]))
            ends.add(int(steps[-1]))
    assert 0 in starts and 7 in ends  # segments reach both ends of the clip
    with pytest.raises(ValueError, match="time steps"):
        SegmentSampler((1, 3, 3))


def test_build_sampler():
    s = build_sampler("multiblock", (2, 6, 6), num_blocks=2)
    assert isinstance(s, MultiblockSampler) and s.num_blocks == 2
    assert isinstance(build_sampler("future", (4, 2, 2), horizon=2), FutureSampler)
    assert isinstance(build_sampler("segment", (4, 2, 2)), SegmentSampler)
    with pytest.raises(ValueError, match="blockwise"):
        build_sampler("blockwise", (4, 2, 2))
    with pytest.raises(ValueError, match="num_block"):
        build_sampler("future", (4, 2, 2), num_block=3)
    with pytest.raises(ValueError, match="target_scale"):
        build_sampler("multiblock", (4, 2, 2), target_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="num_blocks"):
        build_sampler("multiblock", (4, 2, 2), num_blocks=0)


MIXES = {
    "multiblock-future-segment": [
        ("multiblock", {"num_blocks": 2}),
        ("future", {"target_steps": 1}),
        ("segment", {}),
    ],
    "multiblock x3": [
        ("multiblock", {}),
        ("multiblock", {"num_blocks": 2, "temporal_scale": (0.5, 0.5)}),
        ("multiblock", {"num_blocks": 1, "temporal_scale": (0.5, 0.5)}),
    ],
    "segment-future-multiblock": [
        ("segment", {}),
        ("future", {"target_steps": 1, "context_fraction": (0.75, 0.75)}),
        ("multiblock", {"num_blocks": 1, "temporal_scale": (0.5, 0.5)}),
    ],
    "future x3": [("future", {}), ("future", {}), ("future", {})],
}


def make_hier(mix, min_keep=1):
    samplers = [build_sampler(s, g, **p) for (s, p), g in zip(mix, HIER_GRIDS, strict=True)]
    return HierarchicalMaskSampler(samplers, HIER_GRIDS, STRIDES, min_keep=min_keep)


def footprint(target: torch.Tensor, stride: int, hw: int) -> set[int]:
    return {(t // hw * stride + j) * hw + t % hw for t in target.tolist() for j in range(stride)}


def blocks_of(sampler) -> int:
    return getattr(sampler, "num_blocks", 1)


@pytest.mark.parametrize("mix", list(MIXES), ids=list(MIXES))
def test_hierarchy_no_leakage(mix):
    hier = make_hier(MIXES[mix])
    hw = 16
    for seed in range(15):
        levels = hier.sample(6, gen(seed))
        assert len(levels) == 3
        for m, g, smp in zip(levels, HIER_GRIDS, hier.samplers, strict=True):
            check_masks(m, g, 6, blocks_of(smp))
        # reference: the same generator stream, shapes first, then each level's draw
        g = gen(seed)
        shapes = [s.shapes(g) for s in hier.samplers]
        raw = [s.draw(6, sh, g) for s, sh in zip(hier.samplers, shapes, strict=True)]
        for m, (_, target) in zip(levels, raw, strict=True):  # targets are left as sampled
            assert torch.equal(m.target, target)
        for m, (context, _) in zip(levels[1:], raw[1:], strict=True):  # higher contexts: the drawn ones
            for row, drawn in zip(m.context, context, strict=True):
                drawn = set(drawn.nonzero().squeeze(1).tolist())
                assert set(row.tolist()) <= drawn and len(set(row.tolist())) == min(len(drawn), len(row))
        allowed = []
        for b in range(6):
            banned = set().union(
                *(footprint(m.target[b], s, hw) for m, s in zip(levels, STRIDES, strict=True))
            )
            ctx = set(levels[0].context[b].tolist())
            assert not ctx & banned
            own = set(raw[0][0][b].nonzero().squeeze(1).tolist()) - banned
            assert ctx <= own and len(ctx) == min(len(own), levels[0].context.shape[1])
            allowed.append(len(own))
        # the batch's mean count, not its minimum: a longer row keeps a subset, a shorter one repeats
        assert levels[0].context.shape[1] == round(sum(allowed) / len(allowed))


def test_hierarchy_construction_errors():
    mk = [MultiblockSampler(g) for g in HIER_GRIDS]
    with pytest.raises(ValueError, match="per level"):
        HierarchicalMaskSampler(mk[:2], HIER_GRIDS, STRIDES)
    with pytest.raises(ValueError, match="stride"):
        HierarchicalMaskSampler(mk, HIER_GRIDS, [1, 2, 2])
    with pytest.raises(ValueError, match="strides"):
        HierarchicalMaskSampler(mk, HIER_GRIDS, [2, 2, 4])
    with pytest.raises(ValueError, match="spatial"):
        HierarchicalMaskSampler(
            mk[:2] + [MultiblockSampler((2, 4, 5))], HIER_GRIDS[:2] + [(2, 4, 5)], STRIDES
        )
    with pytest.raises(ValueError, match="sampler of level 2"):
        HierarchicalMaskSampler([mk[0], mk[2], mk[2]], HIER_GRIDS, STRIDES)


class FixedSampler:
    """Test stub: the same masks for every sample."""

    def __init__(self, grid, context, target):
        self.grid, self.context, self.target = grid, torch.tensor(context), torch.tensor(target)

    def shapes(self, generator):
        return {}

    def draw(self, batch_size, shapes, generator):
        n = math.prod(self.grid)
        context = torch.zeros(n, dtype=torch.bool).index_fill_(0, self.context, True)
        return context.expand(batch_size, -1).clone(), self.target.expand(batch_size, -1).clone()


def test_hierarchy_zero_context_raises():
    grids = [(4, 1, 2), (2, 1, 2)]
    level1 = FutureSampler(grids[0], context_fraction=(0.5, 0.5))  # context: steps 0, 1 = tokens 0..3
    covers_all = FixedSampler(grids[1], [0], [1, 3])  # footprint: column 1 of all steps; column 0 stays
    HierarchicalMaskSampler([level1, covers_all], grids, [1, 2], min_keep=1).sample(2, gen(0))
    covers_ctx = FixedSampler(grids[1], [2, 3], [0, 1])  # footprint: steps 0, 1 = the whole context
    with pytest.raises(ValueError, match="no visible input"):
        HierarchicalMaskSampler([level1, covers_ctx], grids, [1, 2]).sample(2, gen(0))


def test_hierarchy_warns_below_min_keep():
    grids = [(4, 1, 2), (2, 1, 2)]
    hier = HierarchicalMaskSampler(
        [FutureSampler(grids[0]), FixedSampler(grids[1], [0], [1, 3])], grids, [1, 2], min_keep=3
    )
    with pytest.warns(UserWarning, match="min_keep"):
        levels = hier.sample(2, gen(0))
    assert levels[0].context.tolist() == [[0, 2], [0, 2]]


def make_items(n, step, T=8, actions=True):
    items = []
    for i in range(n):
        item = {
            "clip": torch.full((T, 3, 4, 4), i, dtype=torch.uint8),
            "labels": {"class": i, "scene": 10 + i},
            "step": step,
        }
        if actions:
            item["actions"] = torch.full((T, 2), float(i))
        items.append(item)
    return items


def test_collator_outputs_and_determinism():
    col = MaskCollator(make_hier(MIXES["multiblock x3"]), seed=7)
    out = col(make_items(4, step=5))
    assert out["clips"].shape == (4, 8, 3, 4, 4) and out["clips"].dtype == torch.uint8
    assert out["clips"][2].eq(2).all() and out["actions"].shape == (4, 8, 2) and out["actions"][3].eq(3).all()
    assert out["labels"]["class"].dtype == torch.int64 and out["labels"]["scene"].tolist() == [10, 11, 12, 13]
    assert out["step"] == 5 and len(out["masks"]) == 3
    assert "actions" not in col(make_items(4, step=5, actions=False))

    def same(a, b):
        return all(
            torch.equal(x.context, y.context) and torch.equal(x.target, y.target)
            for x, y in zip(a, b, strict=True)
        )

    col(make_items(4, step=9))  # history must not matter
    assert same(out["masks"], col(make_items(4, step=5))["masks"])
    assert not same(out["masks"], col(make_items(4, step=6))["masks"])
    assert not same(out["masks"], MaskCollator(col.hier, seed=8)(make_items(4, step=5))["masks"])
    clone = pickle.loads(pickle.dumps(col))
    assert same(out["masks"], clone(make_items(4, step=5))["masks"])
    with pytest.raises(ValueError, match="same step"):
        col(make_items(2, step=1) + make_items(1, step=2))


def test_collator_through_dataloader():
    col = MaskCollator(make_hier(MIXES["future x3"]), seed=1)
    items = make_items(4, step=3) + make_items(4, step=4)
    loader = torch.utils.data.DataLoader(items, batch_size=4, num_workers=0, collate_fn=col)
    batches = list(loader)
    assert [b["step"] for b in batches] == [3, 4] and batches[0]["clips"].shape == (4, 8, 3, 4, 4)
    direct = col(make_items(4, step=4))["masks"]
    assert all(torch.equal(x.context, y.context) for x, y in zip(batches[1]["masks"], direct, strict=True))


def coverage(m: LevelMasks, n: int) -> float:
    """Mean fraction of a sample's tokens that lie in some target block."""
    return float(torch.zeros(m.target.shape[0], n, dtype=torch.bool).scatter_(1, m.target, True).float().mean())


@pytest.mark.parametrize("batch", [8, 128])
def test_ijepa_setting_coverage_and_whole_blocks(batch):
    # I-JEPA at 224 px / patch 16: ~0.44 of the tokens are in a target block, at any batch size
    H = W = 14
    sampler = MultiblockSampler((1, H, W), compat="ijepa")
    covs = []
    for seed in range(1024 // batch):
        m = sampler.sample(batch, gen(seed))
        h, w = sampler.last_shapes["target_hw"]
        assert m.target.shape[1] == 4 * h * w  # four whole blocks, nothing trimmed
        blocks = m.target.view(batch, 4, h * w)
        rows, cols = blocks // W, blocks % W
        assert torch.equal(rows, rows[..., :1] + torch.arange(h).repeat_interleave(w))  # a rectangle h x w
        assert torch.equal(cols, cols[..., :1] + torch.arange(w).repeat(h))
        assert rows.max() < H - 1 and cols.max() < W - 1  # I-JEPA's corners stop short of the last row/col
        covs.append(coverage(m, H * W))
    assert abs(sum(covs) / len(covs) - 0.44) <= 0.02


def test_ijepa_compat_draws_scale_and_aspect_together():
    sampler = MultiblockSampler((1, 14, 14), compat="ijepa")
    for seed in range(20):
        sampler.sample(2, gen(seed))
        s = sampler.last_shapes
        assert (s["target_scale"] - 0.15) / 0.05 == pytest.approx((s["target_aspect"] - 0.75) / 0.75)
        area = int(196 * s["target_scale"])
        h, w = sampler.last_shapes["target_hw"]
        assert (h, w) == (min(round(math.sqrt(area * s["target_aspect"])), 13),
                          min(round(math.sqrt(area / s["target_aspect"])), 13))
    with pytest.raises(ValueError, match="compat"):
        MultiblockSampler((1, 14, 14), compat="vjepa")


def test_equal_count_indices_mean_subset_and_even_repeats():
    from hjepa_fast.masks import equal_count_indices

    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :8] = True  # 8 entries
    mask[1, 2:5] = True  # 3 entries
    mask[2, [1, 9]] = True  # 2 entries: mean (8 + 3 + 2) / 3 = 4.33 -> 4 slots
    idx = equal_count_indices(mask, gen(0))
    assert idx.shape == (3, 4) and (idx.diff(dim=1) >= 0).all()
    assert len(set(idx[0].tolist())) == 4 and set(idx[0].tolist()) <= set(range(8))
    assert sorted(set(idx[1].tolist())) == [2, 3, 4]
    assert idx[2].tolist() == [1, 1, 9, 9]
    same = torch.zeros(2, 5, dtype=torch.bool)
    same[:, [0, 3]] = True
    g = gen(1)
    assert equal_count_indices(same, g).tolist() == [[0, 3], [0, 3]]
    assert torch.equal(g.get_state(), gen(1).get_state())  # equal rows draw nothing
    with pytest.raises(ValueError, match="no True"):
        equal_count_indices(torch.zeros(2, 3, dtype=torch.bool), gen(0))


def per_clip_counts(hier: HierarchicalMaskSampler, batch: int, seeds: range) -> torch.Tensor:
    """[levels, 4]: mean per clip over `seeds` of (context slots, distinct context, target slots,
    distinct targets)."""
    out = torch.zeros(len(hier.grids), 4, dtype=torch.float64)
    for seed in seeds:
        for lvl, (m, grid) in enumerate(zip(hier.sample(batch, gen(seed)), hier.grids, strict=True)):
            n = math.prod(grid)
            distinct = [torch.zeros(batch, n, dtype=torch.bool).scatter_(1, i, True).sum(1).double().mean()
                        for i in (m.context, m.target)]
            out[lvl] += torch.tensor([m.context.shape[1], distinct[0], m.target.shape[1], distinct[1]])
    return out / len(seeds)


def test_hierarchy_counts_independent_of_batch():
    # the same seeds draw the same shapes at any batch size; per clip, counts then agree within noise
    hier = make_hier(MIXES["multiblock x3"])
    small, large = per_clip_counts(hier, 8, range(64)), per_clip_counts(hier, 512, range(64))
    assert torch.equal(small[:, 2], large[:, 2])  # target slots: whole blocks, set by the shapes alone
    assert ((large / small - 1).abs() < 0.05).all(), (small, large)


@pytest.mark.slow
def test_vitb_recipe_counts_at_batch_2048_match_batch_8():
    from hjepa_fast.config import load_config
    from hjepa_fast.train.builders import build_mask_sampler

    cfg = load_config("configs/vitb_3level.yaml", ["train.batch_size=8"])
    hier = build_mask_sampler(cfg)
    small, large = per_clip_counts(hier, 8, range(16)), per_clip_counts(hier, 2048, range(16))
    assert torch.equal(small[:, 2], large[:, 2])
    assert ((large / small - 1).abs() < 0.05).all(), (small, large)


def test_masks_compat_setting_reaches_every_multiblock_level():
    from hjepa_fast.config import ConfigError, load_config
    from hjepa_fast.train.builders import build_mask_sampler

    strategies = "masks.strategies=[multiblock,multiblock,multiblock]"
    peer = build_mask_sampler(load_config("configs/tiny_cpu.yaml", [strategies, "masks.compat=ijepa"]))
    ours = build_mask_sampler(load_config("configs/tiny_cpu.yaml", [strategies]))
    assert [s.compat for s in peer.samplers] == ["ijepa"] * 3 and [s.compat for s in ours.samplers] == ["none"] * 3
    with pytest.raises(ConfigError, match="masks.compat"):
        load_config("configs/tiny_cpu.yaml", ["masks.compat=vjepa"])
