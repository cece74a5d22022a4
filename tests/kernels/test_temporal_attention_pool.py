"""temporal_attention_pool: the reference against a per-window loop, the Triton kernels (interpreter on CPU,
real on CUDA) against the reference, forward and all three gradients, with and without hidden steps."""
from __future__ import annotations

import copy
import dataclasses
import functools
import math

import pytest
import torch
from kernel_spy import LaunchSpy
from kernel_tolerance import assert_within_torch_error

import hjepa_fast.kernels.temporal_pool as tp
from hjepa_fast.kernels import kernel_mode, temporal_attention_pool, temporal_attention_pool_reference
from hjepa_fast.kernels.temporal_pool import temporal_attention_pool_triton


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    """Small CPU tiles for every launch the tests make without ``launch=``: many programs per head, ragged
    last blocks, and a query gradient summed over programs (kernel outputs start as NaN: ``conftest.py``)."""
    computed = tp.temporal_pool_launch

    def small(shape, window, dtype, device, **kw):
        cpu = torch.device(device).type != "cuda"
        return computed(shape, window, dtype, device, **({"tile_elements": (512, 512)} if cpu else {}) | kw)

    monkeypatch.setattr(tp, "temporal_pool_launch", small)



def naive_pool(q, k, v, window, visible):
    B, T, N, H, Dh = k.shape
    out = torch.zeros(B, T // window, N, H, Dh, dtype=torch.float64)
    for b, w, n, h in torch.cartesian_prod(*(torch.arange(s) for s in (B, T // window, N, H))).tolist():
        keys = range(w * window, (w + 1) * window)
        seen = [t for t in keys if visible is None or visible[b, t, n]]
        if not seen:
            continue
        scores = torch.stack([q[h].double() @ k[b, t, n, h].double() / math.sqrt(Dh) for t in seen])
        weights = torch.softmax(scores, 0)
        out[b, w, n, h] = sum(wt * v[b, t, n, h].double() for wt, t in zip(weights, seen))
    return out


def pool_float64(q, k, v, window, visible):
    """The reference's arithmetic in float64 (the reference computes in float32): the exact result of
    inputs given as float64, gradients included."""
    B, T, N, H, Dh = k.shape
    kw, vw = (x.reshape(B, T // window, window, N, H, Dh) for x in (k, v))
    scores = torch.einsum("bwknhd,hd->bwknh", kw, q) / math.sqrt(Dh)
    if visible is None:
        weights = torch.softmax(scores, dim=2)
    else:
        vis = visible.reshape(B, T // window, window, N, 1)
        weights = torch.softmax(scores.masked_fill(~vis, -1e30), dim=2) * vis.any(dim=2, keepdim=True)
    return torch.einsum("bwknh,bwknhd->bwnhd", weights, vw)


def assert_pool_matches(q, k, v, window, visible, grad=None, kernel=temporal_attention_pool_triton):
    """The kernel's output and gradients (q, k, v) within torch's own error at their dtypes (the reference)
    of the float64 result."""
    got = pool_and_grads(kernel, q, k, v, window, visible, grad)
    ours = pool_and_grads(temporal_attention_pool_reference, q, k, v, window, visible, grad)
    exact = pool_and_grads(pool_float64, q.double(), k.double(), v.double(), window, visible,
                           None if grad is None else grad.double())
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, ours, exact):
        assert_within_torch_error(a, b, c, name=name)
    return got


def make_inputs(B, T, N, H, Dh, window, masked, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(H, Dh, generator=g).to(dtype)
    k, v = (torch.randn(B, T, N, H, Dh, generator=g).to(dtype) for _ in range(2))
    visible = None
    if masked:
        visible = torch.rand(B, T, N, generator=g) > 0.4
        visible[0, :window, 0] = False  # one window with nothing visible -> zeros, zero gradients
    return q, k, v, visible


def pool_and_grads(fn, q, k, v, window, visible, grad=None):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, window, visible)
    (out.sum() if grad is None else (out * grad).sum()).backward()  # .sum(): a stride-0 incoming grad
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("impl", [temporal_attention_pool, temporal_attention_pool_triton], ids=["public", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window,N,Dh,masked", [(2, 3, 8, False), (4, 5, 6, True), (3, 1, 4, True)])
def test_temporal_attention_pool_matches_a_loop(impl, dtype, window, N, Dh, masked):
    B, T, H = 2, 2 * window, 2
    q, k, v, visible = make_inputs(B, T, N, H, Dh, window, masked, dtype, seed=window)
    out = impl(q, k, v, window, visible)
    assert out.shape == (B, T // window, N, H, Dh) and out.dtype == dtype
    assert_within_torch_error(out, temporal_attention_pool_reference(q, k, v, window, visible),
                              naive_pool(q, k, v, window, visible))


SHAPES = [  # B, T, N, H, Dh, window, masked
    (2, 4, 3, 2, 32, 2, False),
    (2, 8, 5, 3, 48, 4, True),
    (1, 16, 7, 2, 64, 8, True),
    (2, 16, 3, 1, 20, 16, True),
    (3, 6, 1, 2, 6, 3, False),  # window not a power of two: padded time axis
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}N{}H{}Dh{}w{}{}".format(*s[:6], "m" if s[6] else ""))
def test_triton_matches_reference_forward_and_backward(shape, dtype):
    *dims, window, masked = shape
    q, k, v, visible = make_inputs(*dims, window, masked, dtype, seed=sum(shape))
    B, T, N, H, Dh = dims
    grad = torch.randn(B, T // window, N, H, Dh, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = assert_pool_matches(q, k, v, window, visible, grad)
    if masked:  # the all-hidden window: zero output, zero gradients for its keys and values
        assert got[0][0, 0, 0].eq(0).all() and got[2][0, :window, 0].eq(0).all() and got[3][0, :window, 0].eq(0).all()


@pytest.mark.parametrize("tiles,warps", [((128, 64), (2, 1)), ((65536, 65536), (4, 4))], ids=["small", "large"])
def test_launch_settings_given_reach_the_kernels(monkeypatch, tiles, warps):
    """``launch=`` (here CUDA's rules at other tile budgets, run under the interpreter) is what the kernels
    launch with, forward and backward, and they still match the reference."""
    q, k, v, visible = make_inputs(2, 8, 5, 3, 16, 4, True, torch.float32, seed=5)
    launch = tp.temporal_pool_launch(k.shape, 4, k.dtype, "cuda", tile_elements=tiles, warps=warps)
    assert (launch.block_p, launch.bwd_block_p) == ((2, 1) if tiles[0] == 128 else (32, 32))
    fwd, bwd = LaunchSpy(tp._pool_fwd_kernel), LaunchSpy(tp._pool_bwd_kernel)
    monkeypatch.setattr(tp, "_pool_fwd_kernel", fwd)
    monkeypatch.setattr(tp, "_pool_bwd_kernel", bwd)
    for fn in (temporal_attention_pool_triton, temporal_attention_pool):
        with kernel_mode("triton"):
            assert_pool_matches(q, k, v, 4, visible, kernel=functools.partial(fn, launch=launch))
    M, H = 2 * 2 * 5, 3
    for spy, block_p, num_warps in [(fwd, launch.block_p, warps[0]), (bwd, launch.bwd_block_p, warps[1])]:
        assert {(grid, kw["BLOCK_P"], kw["num_warps"]) for grid, kw in spy.launches} == {
            ((-(-M // block_p) * H,), block_p, num_warps)}
    with pytest.raises(ValueError, match="does not cover"):
        temporal_attention_pool_triton(q, k, v, 4, visible, launch=tp.temporal_pool_launch(k.shape, 2, k.dtype, "cpu"))


def test_launch_settings_follow_the_rules():
    """Powers of two, the tile budget kept (so the registers a thread holds are bounded: at most 32 fp32
    values of each loaded tensor on CUDA), never more positions than there are; the CPU's own tiles."""
    for shape, window in [((32, 32, 196, 12, 64), 4), ((1, 2, 1, 1, 3), 2), ((2, 48, 5, 2, 128), 16),
                          ((4, 9, 7, 3, 20), 3)]:
        for dtype, device in [(torch.bfloat16, "cuda"), (torch.float32, torch.device("cuda")), (torch.float32, "cpu")]:
            launch = tp.temporal_pool_launch(shape, window, dtype, device)
            assert launch == tp.temporal_pool_launch(torch.Size(shape), window, dtype, torch.device(device))
            assert all(x & (x - 1) == 0 for x in (launch.kp, launch.block_d, launch.block_p, launch.bwd_block_p))
            assert launch.kp >= window and launch.block_d >= shape[4]
            budget = 4096 if torch.device(device).type == "cuda" else 512  # 512: this file's fixture
            positions = shape[0] * (shape[1] // window) * shape[2]
            for block_p, warps in [(launch.block_p, launch.num_warps), (launch.bwd_block_p, launch.bwd_num_warps)]:
                tile = block_p * launch.kp * launch.block_d
                assert tile <= max(budget, launch.kp * launch.block_d) and block_p <= max(positions, 1) * 2
                if budget == 4096:
                    assert warps == 4 and tile // (32 * warps) <= 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        launch.block_p = 1


def test_non_contiguous_inputs_and_stride0_grad():
    B, T, N, H, Dh, window = 2, 8, 5, 3, 10, 4
    g = torch.Generator().manual_seed(3)
    k = torch.randn(B, N, T, H, Dh, generator=g).transpose(1, 2)  # time and tokens swapped in memory
    v = torch.randn(B, T, N, H, 2 * Dh, generator=g)[..., ::2]  # strided head dim
    q = torch.randn(Dh, H, generator=g).t()
    visible = (torch.rand(B, N, T, generator=g) > 0.3).transpose(1, 2)
    assert not (k.is_contiguous() or v.is_contiguous() or q.is_contiguous() or visible.is_contiguous())
    assert_pool_matches(q, k, v, window, visible)


def test_query_gradient_is_deterministic():
    q, k, v, visible = make_inputs(2, 8, 9, 2, 16, 4, True, torch.float32)
    runs = [pool_and_grads(temporal_attention_pool_triton, q, k, v, 4, visible) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_public_function_dispatches():
    q, k, v, visible = make_inputs(1, 4, 3, 2, 8, 2, True, torch.float32)
    calls = []
    original = tp._forward
    try:
        tp._forward = lambda *a, **kw: calls.append(1) or original(*a, **kw)
        with kernel_mode("reference"):
            temporal_attention_pool(q, k, v, 2, visible)
        assert not calls
        with kernel_mode("triton"):
            temporal_attention_pool(q, k, v, 2, visible)
        assert calls
        calls.clear()
        with kernel_mode("triton"):  # outside the kernels' scope: the reference, not an error
            kk = torch.randn(1, 34, 1, 1, 4)
            temporal_attention_pool(torch.randn(1, 4), kk, kk, 17)
        assert not calls
    finally:
        tp._forward = original


def test_temporal_attention_pool_refuses_bad_shapes():
    k = torch.randn(1, 6, 2, 2, 4)
    for fn in (temporal_attention_pool, temporal_attention_pool_triton):
        with pytest.raises(ValueError, match="multiple of window"):
            fn(torch.randn(2, 4), k, k, 4)
        with pytest.raises(ValueError, match=r"q must be \[H, Dh\]"):
            fn(torch.randn(3, 4), k, k, 2)
        with pytest.raises(ValueError, match=r"visible must be \[B, T, N\]"):
            fn(torch.randn(2, 4), k, k, 2, torch.ones(1, 6, 3, dtype=torch.bool))


def test_triton_refuses_what_it_does_not_support():
    q, k = torch.randn(2, 4), torch.randn(1, 34, 2, 2, 4)
    with pytest.raises(ValueError, match="window <= 16"):
        temporal_attention_pool_triton(q, k, k, 17)
    kb = torch.randn(1, 2, 1, 1, 130)
    with pytest.raises(ValueError, match="Dh <= 128"):
        temporal_attention_pool_triton(torch.randn(1, 130), kb, kb, 2)
    with pytest.raises(ValueError, match="bool"):
        temporal_attention_pool_triton(q, k, k, 2, torch.ones(1, 34, 2))
    with pytest.raises(ValueError, match="floating-point"):
        temporal_attention_pool_triton(q, k.long(), k.long(), 2)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            temporal_attention_pool_triton(q.cuda(), k, k, 2)


def test_compiles_fullgraph_and_passes_opcheck():
    q, k, v, visible = make_inputs(1, 4, 3, 2, 8, 2, True, torch.float32)
    torch.library.opcheck(torch.ops.hjepa_fast.temporal_attention_pool.default, (q, k, v, 2, visible),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    with kernel_mode("triton"):
        eager = pool_and_grads(temporal_attention_pool, q, k, v, 2, visible)
        compiled = pool_and_grads(torch.compile(temporal_attention_pool, fullgraph=True), q, k, v, 2, visible)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_model_attention_pool_unchanged_by_the_kernel(monkeypatch):
    from hjepa_fast.model import abstraction
    from hjepa_fast.model.abstraction import TemporalAttentionPool

    torch.manual_seed(0)
    module = TemporalAttentionPool(dim_in=12, dim_out=16, window=4, heads=2)
    x = torch.randn(2, 8, 3, 12)
    visible = torch.rand(2, 8, 3) > 0.4
    visible[0, :4, 0] = False
    results = {}
    for mode, m, inputs in [("reference", module, x), ("triton", module, x),
                            ("exact", copy.deepcopy(module).double(), x.double())]:
        m.zero_grad()
        if mode == "exact":  # the pool in float64 (the reference computes in float32)
            monkeypatch.setattr(abstraction, "temporal_attention_pool", pool_float64)
        with kernel_mode("reference" if mode == "exact" else mode):
            out = m(inputs, visible)
        out.square().sum().backward()
        results[mode] = [out] + [p.grad.clone() for p in m.parameters() if p.grad is not None]
    for got, ours, exact in zip(results["triton"], results["reference"], results["exact"], strict=True):
        assert_within_torch_error(got, ours, exact)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_gpu_vit_b_shapes_and_determinism(dtype, masked):
    B, T, N, H, Dh, window = 2, 8, 196, 12, 64, 4
    q, k, v, visible = (t if t is None else t.cuda() for t in make_inputs(B, T, N, H, Dh, window, masked, dtype))
    grad = torch.randn(B, T // window, N, H, Dh, device="cuda").to(dtype)
    runs = [assert_pool_matches(q, k, v, window, visible, grad) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)  # bitwise determinism, the query gradient included
    torch._dynamo.reset()  # each case compiles the same function anew: stay under the recompile limit
    with kernel_mode("auto"):
        compiled = torch.compile(temporal_attention_pool, fullgraph=True)
        assert_pool_matches(q, k, v, window, visible, grad, kernel=compiled)


def test_mixed_dtypes_as_under_autocast():
    """The model passes an fp32 query with bf16 keys/values under autocast: gradients keep each dtype."""
    q, k, v, visible = make_inputs(2, 8, 3, 2, 16, 4, True, torch.bfloat16)
    got = assert_pool_matches(q.float(), k, v, 4, visible)
    assert [t.dtype for t in got] == [torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("masked", [False, True])
def test_gpu_integer_arguments_equal_to_one(masked):
    """B, N, H, the window count and several strides equal to 1: Triton compiles such arguments as constants."""
    q, k, v, visible = (t if t is None else t.cuda() for t in make_inputs(1, 2, 1, 1, 16, 2, masked, torch.float32))
    if visible is not None:
        visible[0, 1, 0] = True  # one visible key: the window pools it alone
    assert_pool_matches(q, k, v, 2, visible)
