"""ema_update_, the Triton flat kernel and MultiLevelEMA against the per-tensor loop: mixed shapes and dtypes,
exact ends, level boundaries inside blocks, scheduled steps, resume, packing under an optimizer, input checks."""
from __future__ import annotations

import math

import pytest
import torch
from kernel_spy import LaunchSpy
from kernel_tolerance import assert_within_torch_error

from hjepa_fast.kernels import ema as ema_module
from hjepa_fast.kernels import ema_update_, ema_update_reference_, kernel_mode
from hjepa_fast.kernels.ema import (
    EMALaunch,
    EMASchedule,
    MultiLevelEMA,
    ema_flat_,
    ema_flat_triton_,
    ema_launch,
    ema_update_triton_,
)


def float64(groups):
    """A float64 copy of a list of tensor lists: the start of the exact update."""
    return [[t.detach().double() for t in group] for group in groups]


def assert_groups_close(got, torch_out, exact):
    """Every tensor of ``got`` within torch's own error (``torch_out``, same dtype) of the float64 ``exact``."""
    for got_group, torch_group, exact_group in zip(got, torch_out, exact, strict=True):
        for a, b, c in zip(got_group, torch_group, exact_group, strict=True):
            assert_within_torch_error(a.detach(), b.detach(), c)


def random_groups(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [[(), (7,), (3, 5)], [(64, 33), (1,)], [(2, 3, 4, 5)]]
    make = lambda s: torch.randn(s, generator=g).to(dtype)
    targets = [[make(s) for s in group] for group in shapes]
    sources = [[make(s) for s in group] for group in shapes]
    return targets, sources


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_update_matches_the_per_tensor_loop(dtype):
    targets, sources = random_groups(dtype)
    reference, exact = [[t.clone() for t in group] for group in targets], float64(targets)
    taus = [0.9, 0.5, 0.996]
    ema_update_(targets, sources, taus)
    ema_update_reference_(reference, sources, taus)
    for group, src, tau in zip(exact, float64(sources), taus):  # tau * t + (1 - tau) * s in float64
        for t, s in zip(group, src):
            t.mul_(tau).add_(s, alpha=1 - tau)
    assert_groups_close(targets, reference, exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_tau_one_keeps_and_tau_zero_copies_exactly(dtype):
    targets, sources = random_groups(dtype)
    before = [[t.clone() for t in group] for group in targets]
    ema_update_(targets, sources, [1.0, 0.0, 1.0])
    assert all(torch.equal(t, b) for t, b in zip(targets[0], before[0]))
    assert all(torch.equal(t, s) for t, s in zip(targets[1], sources[1]))
    assert all(torch.equal(t, b) for t, b in zip(targets[2], before[2]))


def test_ema_accepts_flat_lists_and_one_tau():
    t, s = [torch.zeros(3), torch.zeros(2)], [torch.ones(3), torch.ones(2)]
    ema_update_(t, s, 0.75)
    assert torch.allclose(t[0], torch.full((3,), 0.25)) and torch.allclose(t[1], torch.full((2,), 0.25))


@pytest.mark.parametrize(
    "targets,sources,taus,message",
    [
        ([[torch.zeros(3)]], [[torch.zeros(4)]], [0.5], "does not match"),
        ([[torch.zeros(3)]], [[torch.zeros(3, dtype=torch.bfloat16)]], [0.5], "does not match"),
        ([[torch.zeros(3)]], [[torch.zeros(3)], [torch.zeros(3)]], [0.5], "groups"),
        ([[torch.zeros(3)]], [[torch.zeros(3)]], [0.5, 0.5], "taus for 1 groups"),
        ([[torch.zeros(3)]], [[torch.zeros(3)]], [1.5], r"must lie in \[0, 1\]"),
        ([[torch.zeros(3, dtype=torch.long)]], [[torch.zeros(3, dtype=torch.long)]], [0.5], "floating"),
    ],
)
def test_ema_refuses_mismatches(targets, sources, taus, message):
    with pytest.raises(ValueError, match=message):
        ema_update_(targets, sources, taus)


# ---------------------------------------------------------------- Triton kernel, packed buffers, schedule
SHAPES = [[(), (7,), (3, 5)], [(64, 33), (1,)], [(2, 3, 4, 5)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_per_tensor_path_matches_the_loop_with_non_contiguous_tensors(dtype):
    targets, sources = random_groups(dtype)
    targets[1][0] = torch.randn(33, 64).to(dtype).t()  # non-contiguous target
    sources[2][0] = torch.randn(5, 4, 3, 2).to(dtype).permute(3, 2, 1, 0)  # non-contiguous source
    expected, exact = [[t.clone() for t in g] for g in targets], float64(targets)
    taus = [0.9, 0.0, 0.7]
    ema_update_triton_(targets, sources, taus)
    ema_update_reference_(expected, sources, taus)
    ema_update_reference_(exact, float64(sources), taus)
    assert_groups_close(targets, expected, exact)
    assert all(torch.equal(t, s) for t, s in zip(targets[1], sources[1]))  # tau=0 wrote every element


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [16, 64])
def test_flat_kernel_with_level_boundaries_inside_blocks(dtype, block):
    g = torch.Generator().manual_seed(1)
    n, starts = 301, [0, 37, 37, 200]  # level 1 is empty; 301 is not a multiple of the block
    weights = torch.tensor([0.25, 0.5, 1.0, 0.0])
    target, source = (torch.randn(n, generator=g).to(dtype) for _ in range(2))
    expected, exact = target.clone(), target.double()
    bounds = [*starts, n]
    for lvl, w in enumerate(weights.tolist()):
        expected[bounds[lvl]:bounds[lvl + 1]].lerp_(source[bounds[lvl]:bounds[lvl + 1]], w)
        exact[bounds[lvl]:bounds[lvl + 1]].lerp_(source[bounds[lvl]:bounds[lvl + 1]].double(), w)
    ema_flat_triton_(target, source, torch.tensor(starts), weights, block=block)
    assert_within_torch_error(target, expected, exact)
    assert torch.equal(target[37:200], source[37:200])  # w=1 copies exactly, unwritten elements would fail
    assert torch.equal(target[200:], expected[200:])  # w=0 keeps exactly


def test_launch_settings_follow_the_rules():
    """Powers of two; on CUDA 4,096 elements and 8 warps (16 values a thread); under the interpreter one program
    for up to 2^16 elements; cached."""
    for n in (1, 5, 301, 2**16, 10**8):
        for dtype in (torch.float32, torch.bfloat16):
            cuda, cpu = ema_launch(n, dtype, "cuda"), ema_launch(n, dtype, torch.device("cpu"))
            assert cuda == EMALaunch(4096, 8) and cuda.block // (32 * cuda.num_warps) == 16
            assert cpu.block & (cpu.block - 1) == 0 and min(max(n, 16), 2**16) <= cpu.block <= 2**16
            assert cpu.num_warps == 1 and cpu == ema_launch(n, dtype, "cpu")
            assert cpu is ema_launch(n, dtype, torch.device("cpu"))
    assert ema_launch(10, torch.float32, "cuda", block=1024, warps=4) == EMALaunch(1024, 4)



def test_launch_settings_given_reach_the_kernel(monkeypatch):
    """``launch=`` on the flat kernel, the functional update and the custom op is what the kernel launches with;
    the results stay the reference's."""
    spy = LaunchSpy(ema_module._ema_flat_kernel)
    monkeypatch.setattr(ema_module, "_ema_flat_kernel", spy)
    launch = EMALaunch(32, 2)
    g = torch.Generator().manual_seed(4)
    target, source = torch.randn(301, generator=g), torch.randn(301, generator=g)
    starts, weights = torch.tensor([0, 100]), torch.tensor([0.25, 0.5])
    want = target.clone()
    want[:100].lerp_(source[:100], 0.25), want[100:].lerp_(source[100:], 0.5)
    for run in (lambda t: ema_flat_triton_(t, source, starts, weights, launch=launch),
                lambda t: ema_flat_(t, source, starts, weights, [32, 2]),
                lambda t: ema_update_triton_([[t[:100]], [t[100:]]], [[source[:100]], [source[100:]]], [0.75, 0.5],
                                             launch=launch)):
        spy.launches.clear()
        got = target.clone()
        with kernel_mode("triton"):
            run(got)
        torch.testing.assert_close(got, want)
        # 301 elements, 32 a program
        assert [(grid, kw["BLOCK"], kw["num_warps"]) for grid, kw in spy.launches] == [((10,), 32, 2)]


def test_flat_op_refuses_bad_buffers():
    t = torch.zeros(8)
    with pytest.raises(ValueError, match="1-d target and source"):
        ema_flat_triton_(t, torch.zeros(9), torch.zeros(1, dtype=torch.int64), torch.zeros(1))
    with pytest.raises(ValueError, match="level_starts must be int64"):
        ema_flat_triton_(t, torch.zeros(8), torch.zeros(1, dtype=torch.int32), torch.zeros(1))
    with pytest.raises(ValueError, match="contiguous"):
        ema_flat_triton_(torch.zeros(16)[::2], torch.zeros(8), torch.zeros(1, dtype=torch.int64), torch.zeros(1))
    with pytest.raises(ValueError, match="float32"):
        ema_flat_triton_(t, torch.zeros(8), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float64))


def test_flat_op_passes_opcheck_and_compiles_fullgraph():
    g = torch.Generator().manual_seed(2)
    args = (torch.randn(50, generator=g), torch.randn(50, generator=g), torch.tensor([0, 20]),
            torch.tensor([0.3, 0.8]))
    torch.library.opcheck(torch.ops.hjepa_fast.ema_flat_.default, args)
    eager, compiled = args[0].clone(), args[0].clone()
    ema_flat_(eager, *args[1:])
    torch.compile(lambda t: ema_flat_(t, *args[1:]), fullgraph=True)(compiled)
    assert torch.equal(eager, compiled)


def test_functional_foreach_path_compiles_fullgraph():
    targets, sources = random_groups(torch.float32)
    eager, exact = [[t.clone() for t in g] for g in targets], float64(targets)
    ema_update_(eager, sources, [0.9, 0.5, 0.99])
    ema_update_reference_(exact, float64(sources), [0.9, 0.5, 0.99])
    torch.compile(lambda t, s: ema_update_(t, s, [0.9, 0.5, 0.99]), fullgraph=True)(targets, sources)
    assert_groups_close(targets, eager, exact)


def make_levels(dtypes=(torch.float32, torch.bfloat16, torch.float32), seed=3):
    """Per level a small module with odd sizes and a scalar parameter, in the given dtype."""
    torch.manual_seed(seed)
    mods = []
    for dtype in dtypes:
        m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
        m.register_parameter("scale", torch.nn.Parameter(torch.randn(())))
        mods.append(m.to(dtype))
    return mods


def snapshot(mods):
    return [[p.detach().clone() for p in m.parameters()] for m in mods]


SCHEDULE = EMASchedule([0.9, 0.5, 0.0], [0.99, 1.0, 0.0], total_steps=4)


@pytest.mark.parametrize("kind", ["cosine", ["linear", "cosine", "linear"]], ids=["cosine", "mixed"])
@pytest.mark.parametrize("mode", ["triton", "auto"])
def test_multilevel_ema_matches_the_loop_over_scheduled_steps(mode, kind, monkeypatch):
    import hjepa_fast.kernels.ema as ema_module

    launches = []
    launch = ema_module.ema_flat_triton_
    monkeypatch.setattr(ema_module, "ema_flat_triton_", lambda *a, **k: launches.append(1) or launch(*a, **k))
    targets, sources = make_levels(), make_levels(seed=4)
    expected, src = snapshot(targets), snapshot(sources)
    exact, src64 = float64(expected), float64(src)
    schedule = EMASchedule(SCHEDULE.tau_base, SCHEDULE.tau_end, SCHEDULE.total_steps, kind)
    ema = MultiLevelEMA(targets, sources, schedule)
    with kernel_mode(mode):
        for _ in range(6):  # past total_steps: held at tau_end
            taus = ema.step()
            ema_update_reference_(expected, src, taus)
            ema_update_reference_(exact, src64, taus)
    assert ema.step_count == 6 and taus == [0.99, 1.0, 0.0]
    assert len(launches) == (12 if mode == "triton" else 0)  # one launch per (dtype, device) bucket and step
    assert_groups_close(snapshot(targets), expected, exact)
    assert all(torch.equal(p, s) for p, s in zip(targets[2].parameters(), sources[2].parameters()))


def test_schedule_is_the_per_level_cosine():
    s = EMASchedule([0.996, 0.5], [0.9999, 0.9], total_steps=10)
    assert s.taus(0) == [0.996, 0.5] and s.taus(10) == [0.9999, 0.9] and s.taus(99) == [0.9999, 0.9]
    want = 0.9999 - (0.9999 - 0.996) * (math.cos(math.pi * 3 / 10) + 1) / 2
    assert math.isclose(s.taus(3)[0], want, rel_tol=1e-15)
    with pytest.raises(ValueError, match="tau_base for"):
        EMASchedule([0.9], [0.9, 0.9], 3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        EMASchedule([1.1], [0.9], 3)


@pytest.mark.parametrize("kind", ["linear", "cosine", ["linear", "cosine"]])
def test_schedules_equal_the_closed_form_at_every_step(kind):
    base, end, T = [0.996, 0.5], [1.0, 0.9], 40
    s = EMASchedule(base, end, T, kind)
    kinds = [kind] * 2 if isinstance(kind, str) else kind
    table = s.table()
    assert table.shape == (T + 1, 2) and table.dtype == torch.float64
    for t in range(T + 5):
        p = min(t, T) / T
        for level, (b, e, k) in enumerate(zip(base, end, kinds)):
            want = b + (e - b) * p if k == "linear" else e - (e - b) * (math.cos(math.pi * p) + 1) / 2
            assert math.isclose(s.taus(t)[level], want, rel_tol=1e-15, abs_tol=1e-15)
            assert math.isclose(table[min(t, T), level].item(), want, rel_tol=1e-15, abs_tol=1e-15)


def test_linear_schedule_is_the_peers_momentum_generator():
    """I-JEPA: ``ema[0] + i * (ema[1] - ema[0]) / (ipe * epochs * ipe_scale)``, one value per step from 0."""
    ema, total = (0.996, 1.0), 125  # 100 steps x ipe_scale 1.25
    peer = (ema[0] + i * (ema[1] - ema[0]) / total for i in range(total + 1))
    ours = EMASchedule([ema[0]], [ema[1]], total, "linear")
    for step, tau in enumerate(peer):
        assert math.isclose(ours.taus(step)[0], tau, rel_tol=1e-15)


def test_schedule_kind_refused_by_name():
    with pytest.raises(ValueError, match="kind must be one of"):
        EMASchedule([0.9], [0.99], 3, "exp")
    with pytest.raises(ValueError, match="one per level"):
        EMASchedule([0.9, 0.9], [0.99, 0.99], 3, ["linear"])


def test_multilevel_ema_resumes_from_state_dict():
    straight_t, resumed_t, sources = make_levels(), make_levels(), make_levels(seed=4)
    straight = MultiLevelEMA(straight_t, sources, SCHEDULE)
    for _ in range(5):
        straight.step()
    first = MultiLevelEMA(resumed_t, sources, SCHEDULE)
    for _ in range(3):
        first.step()
    state = first.state_dict()
    second = MultiLevelEMA(resumed_t, sources, SCHEDULE)
    second.load_state_dict(state)
    second.step(), second.step()
    for a, b in zip(straight_t, resumed_t):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_packing_keeps_the_optimizer_working_and_repacks_after_rebinding():
    targets, sources, twin = make_levels(), make_levels(seed=4), make_levels(seed=4)
    opt = torch.optim.AdamW([p for m in sources for p in m.parameters()], lr=0.1)
    opt_twin = torch.optim.AdamW([p for m in twin for p in m.parameters()], lr=0.1)
    ema = MultiLevelEMA(targets, sources, SCHEDULE)  # after the optimizer: same Parameter objects
    for m, o in ((sources, opt), (twin, opt_twin)):
        sum(p.float().square().sum() for mod in m for p in mod.parameters()).backward()
        o.step()
    for a, b in zip(sources, twin):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    storage = ema._buckets[0][1].untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in sources[0].parameters())  # still views
    p = next(targets[0].parameters())
    p.data = p.data.clone()  # e.g. module.to() or load_state_dict(assign=True)
    before = p.detach().clone()
    ema.step(0)
    assert not torch.equal(p, before), "the rebound parameter must still be updated"
    middle = list(targets[0].parameters())[2]
    middle.data = middle.data.clone()  # one parameter by hand: repack() says so
    ema.repack()
    before = middle.detach().clone()
    ema.step(0)
    assert not torch.equal(middle, before)


def test_parameters_flattened_by_someone_else_are_not_packed_but_updated():
    targets, sources = make_levels((torch.float32,) * 3), make_levels((torch.float32,) * 3, seed=4)
    params = [p for m in sources for p in m.parameters()]
    engine_buffer = torch.cat([p.detach().reshape(-1) for p in params])  # as DeepSpeed ZeRO-1/2 flattens
    offset = 0
    for p in params:
        p.data = engine_buffer[offset:offset + p.numel()].view(p.shape)
        offset += p.numel()
    expected, src = snapshot(targets), snapshot(sources)
    with pytest.warns(UserWarning, match="views into another buffer"):
        ema = MultiLevelEMA(targets, sources, SCHEDULE)
    assert not ema.packed
    ema_update_reference_(expected, src, ema.step())
    assert all(p.untyped_storage().data_ptr() == engine_buffer.untyped_storage().data_ptr() for p in params)
    for m, eg in zip(targets, expected):
        assert all(torch.equal(p, e) for p, e in zip(m.parameters(), eg))


def test_multilevel_ema_refuses_bad_input():
    a, b = make_levels(), make_levels(seed=4)
    with pytest.raises(ValueError, match="taus for 3 groups"):
        MultiLevelEMA(a, b, EMASchedule([0.9], [0.99], 3))
    with pytest.raises(ValueError, match="does not match"):
        MultiLevelEMA(a, [b[1], b[0], b[2]], SCHEDULE)
    x, y = make_levels((torch.float32,) * 3), make_levels((torch.float32,) * 3, seed=4)
    with pytest.raises(ValueError, match="appears twice"):
        MultiLevelEMA([x[0], x[0], x[2]], y, SCHEDULE)


def test_bf16_target_stalls_where_fp32_moves():
    """The documented caveat: with tau near 1 the step is below bf16 resolution."""
    t32, s = torch.ones(1000), torch.full((1000,), 1.5)
    t16 = t32.bfloat16()
    ema_update_([t32, t16], [s, s.bfloat16()], 0.9999)
    assert (t32 > 1).all() and (t16 == 1).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_multilevel_ema_vit_b_shapes_matches_and_is_deterministic(dtype):
    def levels(seed):
        torch.manual_seed(seed)
        return [torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(d, d // 64, 4 * d, batch_first=True)
                                      for _ in range(depth)]).to("cuda", dtype)
                for d, depth in ((768, 2), (384, 2), (192, 2))]

    runs = []
    for _ in range(2):
        targets, sources = levels(0), levels(1)
        expected, src = snapshot(targets), snapshot(sources)
        exact, src64 = float64(expected), float64(src)
        ema = MultiLevelEMA(targets, sources, EMASchedule([0.996, 0.9, 0.5], [0.9999, 0.99, 0.9], 10))
        for _ in range(3):
            taus = ema.step()
            ema_update_reference_(expected, src, taus)
            ema_update_reference_(exact, src64, taus)
        assert_groups_close(snapshot(targets), expected, exact)
        runs.append(snapshot(targets))
    assert all(torch.equal(a, b) for ga, gb in zip(*runs) for a, b in zip(ga, gb))
