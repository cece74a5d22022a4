"""masked_l2_loss / masked_jepa_loss: references against independent formulas; the Triton kernel (under
the interpreter on CPU) against the references: values, gradients, layouts, input checks, compile."""
from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from kernel_spy import LaunchSpy
from kernel_tolerance import assert_within_torch_error

from hjepa_fast.kernels import kernel_mode, masked_l2_loss
from hjepa_fast.kernels import masked_loss as ml

# (name, reference, triton) for every loss the kernel computes
LOSSES = [
    ("l2", ml.masked_l2_loss_reference, ml.masked_l2_loss_triton),
    ("ijepa", ml.masked_jepa_loss_reference, ml.masked_jepa_loss_triton),
    *[(f"vjepa_p{p}_{norm}", functools.partial(ml.masked_jepa_loss_reference, kind="lp", p=p, target_norm=norm),
       functools.partial(ml.masked_jepa_loss_triton, kind="lp", p=p, target_norm=norm))
      for p, norm in [(1.0, "layer"), (2.0, None), (1.5, "layer")]],
    ("smooth_l1_raw", functools.partial(ml.masked_jepa_loss_reference, target_norm=None),
     functools.partial(ml.masked_jepa_loss_triton, target_norm=None)),
]
LOSS_IDS = [name for name, _, _ in LOSSES]


def _inputs(B, M, N, D, dtype, seed, idx_shape="bm"):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, M, D, generator=g).to(dtype).requires_grad_()
    target = torch.randn(B, N, D, generator=g).to(dtype)
    idx = torch.randint(0, N, (B, M) if idx_shape == "bm" else (M,), generator=g)  # repeats allowed
    return pred, target, idx


def _loss_and_grad(fn, pred, target, idx, scale=3.0):
    loss = fn(pred, target, idx)
    (grad,) = torch.autograd.grad(loss * scale, pred)  # a grad_output other than 1
    return loss, grad


def _torch_loss_and_grad(reference, pred, target, idx, scale=3.0):
    """torch at pred's dtype, in the kernel's order of operations (flash-attention's ``reorder_ops``): the
    gradient for a unit grad_output, rounded to pred's dtype, then scaled in that dtype, as the kernel
    computes its gradient in the forward and scales it in the backward."""
    loss = reference(pred, target, idx)
    (grad,) = torch.autograd.grad(loss, pred)
    return loss, grad * scale


def _assert_match(reference, kernel, pred, target, idx, name="", scale=3.0):
    """The kernel's loss and gradient against the float64 reference: each error at most torch's own at pred's
    dtype by the rule of ``kernel_tolerance``, p < 2 gradients outside their kinks (``_lp_kinks``)."""
    exact = _loss_and_grad(reference, pred.detach().double().requires_grad_(), target.double(), idx, scale)
    ours = _torch_loss_and_grad(reference, pred, target, idx, scale)
    loss, grad = _loss_and_grad(kernel, pred, target, idx, scale)
    assert loss.dtype == torch.float32 and loss.shape == ()
    # the loss is one number, a mean of n terms of order one summed as a tree in another order than torch's:
    # torch's error on it may be 0 by chance, the kernel's up to ~log2(n) ulps of order one (also where the
    # mean is 0, D 1: two unit vectors of one element)
    ulps = max(4.0, math.log2(max(pred.numel(), 1)))
    assert_within_torch_error(loss, ours[0], exact[0], scale=max(1.0, exact[0].abs().item()), ulps=ulps, name="loss")
    kinks = _lp_kinks(name, pred, target, idx)
    assert_within_torch_error(grad, ours[1], exact[1], keep=None if kinks is None else ~kinks, name="gradient")


def _lp_kinks(name, pred, target, idx, width=2e-3):
    """Elements where ``|pred - target|`` (target gathered and layer-normalised, in float64) lies within
    ``width`` of 0, for the V-JEPA losses with p < 2: there the gradient ``|x|^(p-1) sign(x)`` jumps (p 1)
    or has an infinite slope (p 1.5), so a float32 rounding of the layer norm (~1e-6) moves it by much more
    than a rounding, for the kernel and torch at different elements: neither error bounds the other, and
    the comparison leaves these elements out (about 0.1% of them). Measured: p 1.5 in float32 at 2x5x9x7
    here (kernel 12 ulps of the largest gradient, torch 1.5); on an H200 one element in 7M for p 1, at
    |x| < 1e-5."""
    if not name.startswith("vjepa") or "p2.0" in name:
        return None
    rows = torch.arange(pred.shape[0]) % target.shape[0]  # row b of pred reads target sample b % B_t
    t = target.double()[rows] if idx is None else target.double()[rows[:, None], idx]
    if name.endswith("_layer"):
        t = torch.nn.functional.layer_norm(t, (t.shape[-1],), eps=1e-5)
    kinks = (pred.detach().double().cpu() - t.cpu()).abs() < width
    assert kinks.sum() <= max(3, 5e-3 * kinks.numel())
    return kinks


# ---- references against independent formulas ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,M,N,D", [(2, 5, 9, 7), (3, 17, 40, 96), (1, 1, 1, 1)])
@pytest.mark.parametrize("mode", ["reference", "triton"])
def test_masked_l2_loss_matches_the_formula(mode, dtype, B, M, N, D):
    g = torch.Generator().manual_seed(B * 100 + D)
    pred = torch.randn(B, M, D, generator=g).to(dtype).requires_grad_()
    target = torch.randn(B, N, D, generator=g).to(dtype).requires_grad_()
    idx = torch.randint(0, N, (B, M), generator=g)  # repeats allowed
    with kernel_mode(mode):
        loss = masked_l2_loss(pred, target, idx)
    expected = 0.0
    for b in range(B):
        for m in range(M):
            p, t = pred[b, m].double(), target[b, idx[b, m]].double()
            expected += ((p / p.norm() - t / t.norm()) ** 2).sum().item()
    assert loss.dtype == torch.float32
    # float32 arithmetic on inputs that float32 holds exactly: a few float32 ulps of terms of order one
    assert loss.item() == pytest.approx(expected / (B * M), rel=1e-6, abs=1e-6)
    loss.backward()
    assert target.grad is None and pred.grad is not None and pred.grad.shape == pred.shape


@pytest.mark.parametrize("kind,p", [("smooth_l1", 1.0), ("lp", 1.0), ("lp", 2.0)])
def test_masked_jepa_loss_reference_matches_the_formula(kind, p):
    pred, target, idx = _inputs(2, 6, 9, 10, torch.float32, seed=5)
    pred = (pred * 2).detach()  # both branches of smooth L1
    t = target.double()[torch.arange(2)[:, None], idx]
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    x = (pred.double() - t).abs()
    expected = torch.where(x < 1, 0.5 * x**2, x - 0.5).mean() if kind == "smooth_l1" else (x**p).mean() / p
    loss = ml.masked_jepa_loss_reference(pred, target, idx, kind=kind, p=p)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_masked_l2_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 4, 5, dtype=torch.float64)
    idx = torch.tensor([1, 3, 3])  # [M] shared by the batch
    assert torch.autograd.gradcheck(lambda p: masked_l2_loss(p.float(), target.float(), idx).double(), pred,
                                    eps=1e-3, atol=1e-3)


def test_masked_l2_loss_without_idx_and_non_contiguous():
    torch.manual_seed(0)
    target = torch.randn(2, 6, 4)
    pred = torch.randn(2, 4, 6).transpose(1, 2)  # non-contiguous [2, 6, 4]
    idx = torch.arange(6).expand(2, 6)
    assert masked_l2_loss(pred, target).item() == pytest.approx(masked_l2_loss(pred, target, idx).item())


# ---- the Triton kernel against the references ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,M,N,D", [(2, 5, 9, 7), (3, 37, 40, 96), (2, 13, 20, 200), (1, 1, 1, 1)])
@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_triton_matches_reference(name, reference, triton_fn, dtype, B, M, N, D):
    pred, target, idx = _inputs(B, M, N, D, dtype, seed=B * 1000 + M + D)
    _assert_match(reference, triton_fn, pred, target, idx, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,M,N,D", [(2, 5, 9, 3), (3, 11, 14, 40), (2, 13, 20, 96)])
@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_triton_split_rows_match_reference(name, reference, triton_fn, dtype, B, M, N, D):
    """Rows held as two power-of-two chunks (``split_rows``; 3 = 2 + 1, 40 = 32 + 8, 96 = 64 + 32): the
    same losses and gradients; every row sum spans both chunks."""
    pred, target, idx = _inputs(B, M, N, D, dtype, seed=D + B)
    launch = ml.masked_loss_launch(pred.shape, dtype, pred.device, split_rows=True)
    assert launch.lo > 0
    _assert_match(reference, functools.partial(triton_fn, launch=launch), pred, target, idx, name)


@pytest.mark.parametrize("tiles,stages,split", [(1, 1, False), (4, 3, False), (4, 3, True)],
                         ids=["one tile", "4 tiles pipelined", "4 tiles pipelined split rows"])
@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_triton_with_the_cuda_tiling_many_programs(monkeypatch, name, reference, triton_fn, tiles, stages, split):
    """The CUDA launch settings under the interpreter (``launch=``): few rows per tile, a ragged last tile;
    with several tiles per program also a last program whose last tiles lie wholly past the rows (D 300:
    split rows are 256 + 64 columns). The kernel launches with them, forward and backward."""
    pred, target, idx = _inputs(3, 23, 30, 300, torch.float32, seed=7)  # 69 rows: 18 tiles, the last ragged
    launch = ml.masked_loss_launch(pred.shape, pred.dtype, "cuda", tiles=tiles, stages=stages, split_rows=split)
    assert launch.block_r == 2048 // 512 == 4 and (launch.tiles, launch.stages) == (tiles, stages)
    assert (launch.hi, launch.lo) == ((256, 64) if split else (512, 0))
    fwd, scale = LaunchSpy(ml._masked_loss_fwd_kernel), LaunchSpy(ml._scale_kernel)
    monkeypatch.setattr(ml, "_masked_loss_fwd_kernel", fwd)
    monkeypatch.setattr(ml, "_scale_kernel", scale)
    # 4 tiles a program: 5 programs, tiles 18 and 19 past the rows
    _assert_match(reference, functools.partial(triton_fn, launch=launch), pred, target, idx, name)
    assert {(grid, kw["BLOCK_R"], kw["HI"], kw["LO"], kw["TILES"], kw["STAGES"], kw["num_warps"])
            for grid, kw in fwd.launches} == {((-(-18 // tiles),), 4, launch.hi, launch.lo, tiles, stages, 2)}
    # the backward's product: 69 x 300 elements, 4,096 a program
    assert {(grid, kw["BLOCK"], kw["num_warps"]) for grid, kw in scale.launches} == {((6,), 4096, 8)}


def test_cuda_rows_wider_than_a_tile_get_a_program_each_and_no_pipelining():
    """Tuned tiles, warps and pipelining apply to rows that fit a tile; a longer row would spill registers
    (2 warps for 16k elements) or overflow shared memory (3 stages of 16k fp32 elements are 256 KB)."""
    def forward(D):
        launch = ml.masked_loss_launch((10, 100, D), torch.bfloat16, "cuda", tile_elements=1024, warps=2, tiles=8,
                                       stages=3)  # "cuda" only names the device
        return dataclasses.astuple(launch)[:6]

    assert forward(768) == (1, 1024, 0, 2, 8, 3)
    assert forward(96) == (8, 128, 0, 2, 8, 3)
    assert forward(1025) == (1, 2048, 0, 2, 1, 1)
    assert forward(ml.MAX_D) == (1, ml.MAX_D, 0, 16, 1, 1)


def test_split_rows_take_two_chunks_only_where_one_would_pad_more():
    assert [ml._row_chunks(D, True) for D in (768, 96, 3, 300, 1000, 200, 512, 1)] == [
        (512, 256), (64, 32), (2, 1), (256, 64), (1024, 0), (256, 0), (512, 0), (1, 0)]
    split = ml.masked_loss_launch((10, 100, 768), torch.bfloat16, "cuda", split_rows=True)
    assert split.block_r == 2048 // 1024 and (split.hi, split.lo) == (512, 256)  # rows per tile kept
    assert ml._row_chunks(768, False) == (1024, 0)


_DEVICES = ["cuda", torch.device("cuda"), "cpu", torch.device("cpu")]


@pytest.mark.parametrize("device", _DEVICES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launch_settings_follow_the_rules(device, dtype):
    """Powers of two; rows of at most ``tile_elements`` (or one row a tile); at the CUDA defaults at most 32
    fp32 values of each row tile per thread (registers: no spills, ``tests/cuda_compile.py``) and one tile a
    program; the CPU's many rows a program; the same object for the same arguments (cached)."""
    for shape in [(128, 1176, 768), (128, 784, 96), (2, 5, 3), (1, 1, 1), (4, 7, 1000), (2, 3, ml.MAX_D),
                  (3, 0, 8)]:
        launch = ml.masked_loss_launch(shape, dtype, device)
        assert launch is ml.masked_loss_launch(torch.Size(shape), dtype, device)
        pow2 = [launch.block_r, launch.hi, launch.scale_block, launch.tiles]
        assert all(x & (x - 1) == 0 and x > 0 for x in pow2) and launch.lo == 0
        assert launch.hi >= shape[-1] and launch.triton_scale
        cols = launch.block_r * launch.hi
        if torch.device(device).type == "cuda":
            assert cols <= max(2048, launch.hi) and launch.block_r <= 64
            assert cols // (32 * launch.num_warps) <= 32 and (launch.tiles, launch.stages) == (1, 1)
            assert (launch.scale_block, launch.scale_warps) == (4096, 8)
        else:
            assert cols <= 2**16 and launch.num_warps == 4 and launch.scale_block == 2**16
            assert launch.block_r <= max(1, 2 * math.prod(shape[:-1]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        launch.block_r = 2



def test_launch_settings_given_reach_the_kernel_on_every_door(monkeypatch):
    """``launch=`` on the public function, the ``*_triton`` form and under torch.compile (the custom op) is
    what the kernel launches with, and the result stays the reference's; a launch too narrow for D is refused."""
    pred, target, idx = _inputs(3, 13, 20, 40, torch.float32, seed=9)
    launch = dataclasses.replace(ml.masked_loss_launch(pred.shape, pred.dtype, "cpu", split_rows=True), block_r=4,
                                 tiles=2, scale_block=64)
    fwd = LaunchSpy(ml._masked_loss_fwd_kernel)
    monkeypatch.setattr(ml, "_masked_loss_fwd_kernel", fwd)
    with kernel_mode("triton"):
        for fn in (ml.masked_l2_loss, ml.masked_l2_loss_triton,
                   torch.compile(ml.masked_l2_loss_triton, fullgraph=True, backend="aot_eager")):
            fwd.launches.clear()
            _assert_match(ml.masked_l2_loss_reference, functools.partial(fn, launch=launch), pred, target, idx)
            assert {(grid, kw["BLOCK_R"], kw["HI"], kw["LO"], kw["TILES"]) for grid, kw in fwd.launches} == {
                ((5,), 4, 32, 8, 2)}  # 39 rows: 10 tiles of 4 rows, 2 a program
    with pytest.raises(ValueError, match="covers 32 columns of a row of 40"):
        ml.masked_l2_loss_triton(pred, target, idx, launch=dataclasses.replace(launch, lo=0))


@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_triton_layouts_idx_forms_and_stride0_grad(name, reference, triton_fn):
    """Non-contiguous pred/target/idx, int32 and [M] idx, no idx, all-equal idx, an expanded grad_output."""
    g = torch.Generator().manual_seed(11)
    pred = torch.randn(2, 9, 6, generator=g).transpose(1, 2).requires_grad_()  # [2, 6, 9], strides (54, 1, 6)
    target = torch.randn(2, 20, 18, generator=g)[:, ::2, ::2]  # [2, 10, 9], strided rows and columns
    idx_big = torch.randint(0, 10, (2, 12), generator=g)
    for idx, tgt in [(idx_big[:, ::2], target), (idx_big[0, :6].int(), target), (torch.full((2, 6), 4), target),
                     (None, target[:, 2:8])]:
        def loss_and_grad(fn, pred, target, idx=idx):
            loss = fn(pred, target, idx)
            return loss, torch.autograd.grad(loss.expand(5).sum(), pred)[0]  # grad_output: stride-0 view of one value

        exact = loss_and_grad(reference, pred.detach().double().requires_grad_(), tgt.double())
        for what, got, ours, want in zip(("loss", "gradient"), loss_and_grad(triton_fn, pred, tgt),
                                         loss_and_grad(reference, pred, tgt), exact):
            assert_within_torch_error(got, ours, want, name=what)


@pytest.mark.parametrize("name,reference,triton_fn", LOSSES[:2], ids=LOSS_IDS[:2])
def test_check_idx_false_same_result_and_out_of_range_rows_read_as_zeros(name, reference, triton_fn):
    """``check_idx=False`` (no host sync) gives the checked result on valid indices; on an out-of-range
    index the kernel reads a zero row (never out of bounds), where the checked call refuses."""
    pred, target, idx = _inputs(3, 11, 13, 40, torch.float32, seed=5)
    for fn in (reference, triton_fn):
        assert torch.equal(fn(pred, target, idx, check_idx=False), fn(pred, target, idx))
    bad, zero_row = idx.clone(), idx.clone()
    bad[1, 4], zero_row[1, 4] = 13 + 1000, 13
    padded = torch.cat([target, torch.zeros(3, 1, 40)], dim=1)  # row 13: zeros
    with pytest.raises(ValueError, match="out of range"):
        triton_fn(pred, target, bad)
    torch.testing.assert_close(triton_fn(pred, target, bad, check_idx=False), reference(pred, padded, zero_row))


def test_triton_l2_zero_rows_match_the_normalize_clamp():
    pred, target, idx = _inputs(2, 5, 9, 7, torch.float32, seed=3)
    with torch.no_grad():
        pred[0, 1] = 0
        target[1, idx[1, 2]] = 0
        pred[1, 3] = 1e-14  # below the eps clamp, non-zero
    _assert_match(ml.masked_l2_loss_reference, ml.masked_l2_loss_triton, pred, target, idx)


@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_no_tokens_give_nan_like_the_reference(name, reference, triton_fn):
    """M = 0: the mean over no tokens is NaN on both paths, and the gradient is empty."""
    pred, target, idx = _inputs(2, 0, 5, 8, torch.float32, seed=0)
    for fn in (reference, triton_fn):
        loss = fn(pred, target, idx)
        assert loss.shape == () and loss.dtype == torch.float32 and torch.isnan(loss)
        assert torch.autograd.grad(loss, pred)[0].shape == (2, 0, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,scale", [(2**17 + 37, -2.5), (5, 0.0), (0, 3.0)])
def test_backward_scale_kernel_matches_torch_product(dtype, n, scale):
    """The eager backward's Triton product against torch's ``grad * grad_output`` over several programs with a
    ragged last one (2^16 elements a program here): fp32 exactly; half types within one rounding (the
    interpreter truncates on the cast to them, a GPU rounds to nearest: the GPU test asserts equality)."""
    grad = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
    grad_loss = torch.tensor(scale)
    got, want = ml._scaled_gradient(grad, grad_loss), grad * grad_loss
    assert got.dtype == dtype and got.shape == grad.shape
    torch.testing.assert_close(got, want, rtol=torch.finfo(dtype).eps if dtype != torch.float32 else 0, atol=0)


def test_backward_keeps_a_graph_when_asked_and_can_use_torch(monkeypatch):
    """``create_graph`` with a differentiable ``grad_output`` takes torch's product, so the gradient stays
    differentiable in it; ``triton_scale`` off gives the same gradient."""
    pred, target, idx = _inputs(2, 7, 9, 12, torch.float32, seed=3)
    weight = torch.tensor(2.0, requires_grad=True)
    (grad,) = torch.autograd.grad(ml.masked_l2_loss_triton(pred, target, idx) * weight, pred, create_graph=True)
    (d_weight,) = torch.autograd.grad(grad.sum(), weight)
    _, unit_grad = _loss_and_grad(ml.masked_l2_loss_triton, pred, target, idx, scale=1.0)
    torch.testing.assert_close(d_weight, unit_grad.sum())
    monkeypatch.setattr(ml, "_scale_kernel", None)  # would raise if launched
    torch_product = ml.masked_loss_launch(pred.shape, pred.dtype, pred.device, triton_scale=False)
    kernel = functools.partial(ml.masked_l2_loss_triton, launch=torch_product)
    torch.testing.assert_close(_loss_and_grad(kernel, pred, target, idx, scale=2.0)[1], grad)


def test_triton_without_grad_skips_the_gradient_and_is_deterministic():
    pred, target, idx = _inputs(3, 37, 40, 96, torch.float32, seed=1)
    with torch.no_grad():
        loss = ml.masked_l2_loss_triton(pred, target, idx)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(ml.masked_l2_loss_reference(pred, target, idx).item(), rel=1e-6)
    _, grad = ml._masked_latent_loss_op(pred.detach(), target, idx, ml._L2, False, 1.0, False)
    assert grad.numel() == 0
    first, second = (_loss_and_grad(ml.masked_jepa_loss_triton, pred, target, idx) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_public_functions_dispatch_on_the_kernel_mode(monkeypatch):
    pred, target, idx = _inputs(2, 5, 9, 7, torch.float32, seed=2)
    calls, launch = [], ml._masked_latent_loss  # the launch behind both the eager and the compiled door
    monkeypatch.setattr(ml, "_masked_latent_loss", lambda *args: calls.append(args[3]) or launch(*args))
    with kernel_mode("reference"):
        ml.masked_l2_loss(pred, target, idx), ml.masked_jepa_loss(pred, target, idx)
    assert calls == []
    ml.masked_l2_loss(pred, target, idx)  # auto on CPU tensors: the reference
    assert calls == []
    with kernel_mode("triton"):
        ml.masked_l2_loss(pred, target, idx), ml.masked_jepa_loss(pred, target, idx, kind="lp")
    assert calls == [ml._L2, ml._LP]


def test_public_functions_fall_back_beyond_the_kernel_width():
    pred, target, idx = _inputs(1, 2, 3, ml.MAX_D + 1, torch.float32, seed=4)
    with pytest.raises(ValueError, match="supports D <="):
        ml.masked_l2_loss_triton(pred, target, idx)
    with kernel_mode("triton"):
        assert ml.masked_jepa_loss(pred, target, idx).item() == pytest.approx(
            ml.masked_jepa_loss_reference(pred, target, idx).item())


# ---- a target batch that divides the prediction batch (I-JEPA's layout) ------------------------------------


@pytest.mark.parametrize("B,Bt", [(6, 2), (4, 1), (3, 3)])
@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_broadcast_target_equals_the_repeated_target(name, reference, triton_fn, B, Bt):
    """Row b of pred reads target sample b % Bt: the same loss and gradient as with the target repeated to
    B samples, through the reference and the kernel, with and without idx."""
    g = torch.Generator().manual_seed(B * 10 + Bt)
    pred = torch.randn(B, 7, 24, generator=g).requires_grad_()
    target = torch.randn(Bt, 11, 24, generator=g)
    idx = torch.randint(0, 11, (B, 7), generator=g)
    repeated = target.repeat(B // Bt, 1, 1)  # sample b % Bt at row b
    for fn in (reference, triton_fn):
        for idx_arg, tgt in ((idx, target), (idx[0], target), (None, target[:, :7])):
            want_target = repeated if tgt is target else repeated[:, :7]
            _assert_match(reference, lambda p, t, i, fn=fn, tgt=tgt: fn(p, tgt, i), pred, want_target, idx_arg, name)


@pytest.mark.parametrize("mode", ["reference", "triton"])
def test_ijepa_drop_in_one_call(mode):
    """I-JEPA's loss as its trainer computes it (targets layer-normalised, gathered per prediction mask,
    masks stacked along the batch, repeated for each context mask, smooth L1 over all elements) equals one
    call on the un-normalised target-encoder output with the indices stacked the same way."""
    B, N, D, K, n_enc, n_pred = 3, 20, 16, 5, 2, 3
    g = torch.Generator().manual_seed(0)
    h = torch.randn(B, N, D, generator=g)
    masks_pred = [torch.rand(B, N, generator=g).argsort(1)[:, :K] for _ in range(n_pred)]

    def stack(per_mask: list[torch.Tensor]) -> torch.Tensor:  # mask-major, each mask's block once per context mask
        return torch.cat([block for block in per_mask for _ in range(n_enc)])

    h_norm = torch.nn.functional.layer_norm(h, (D,))
    targets = stack([torch.gather(h_norm, 1, m[..., None].expand(B, K, D)) for m in masks_pred])
    z = torch.randn(n_pred * n_enc * B, K, D, generator=g).requires_grad_()
    want = torch.nn.functional.smooth_l1_loss(z, targets)
    (want_grad,) = torch.autograd.grad(want, z)
    with kernel_mode(mode):
        got = ml.masked_jepa_loss(z, h, stack(masks_pred))
    (got_grad,) = torch.autograd.grad(got, z)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["reference", "triton"])
@pytest.mark.parametrize("p", [1.0, 2.0])
def test_vjepa_drop_in_per_mask(mode, p):
    """V-JEPA's loss as its trainer computes it (targets layer-normalised and gathered per mask, the mean of
    |z_i - h_i|^p / p summed over masks and divided by their number) equals one call per mask on the
    un-normalised target-encoder output."""
    B, N, D, K, n_masks = 2, 24, 16, 6, 2
    g = torch.Generator().manual_seed(1)
    h = torch.randn(B, N, D, generator=g)
    masks = [torch.rand(B, N, generator=g).argsort(1)[:, :K] for _ in range(n_masks)]
    z = [torch.randn(B, K, D, generator=g).requires_grad_() for _ in range(n_masks)]
    h_norm = torch.nn.functional.layer_norm(h, (D,))
    targets = [torch.gather(h_norm, 1, m[..., None].expand(B, K, D)) for m in masks]
    want = sum(torch.mean(torch.abs(zi - hi) ** p) / p for zi, hi in zip(z, targets)) / n_masks
    want_grads = torch.autograd.grad(want, z)
    with kernel_mode(mode):
        got = sum(ml.masked_jepa_loss(zi, h, mi, kind="lp", p=p) for zi, mi in zip(z, masks)) / n_masks
    got_grads = torch.autograd.grad(got, z)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


# ---- input checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred,target,idx,message",
    [
        (torch.randn(2, 3), torch.randn(2, 4, 3), None, r"pred must be \[B, M, D\]"),
        (torch.randn(2, 3, 5), torch.randn(4, 5), None, r"target must be \[B, N, D\]"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 6), torch.zeros(2, 3, dtype=torch.long), "does not match"),
        (torch.randn(4, 3, 5), torch.randn(3, 4, 5), torch.zeros(4, 3, dtype=torch.long), "equal pred's or divide"),
        (torch.randn(2, 3, 5), torch.randn(4, 4, 5), torch.zeros(2, 3, dtype=torch.long), "equal pred's or divide"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), None, r"without idx, target must be"),
        (torch.randn(2, 3, 0), torch.randn(2, 4, 0), None, "D >= 1"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.tensor([[0, 1, 4], [0, 0, 0]]), "out of range"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.tensor([[0, 1, -1], [0, 0, 0]]), "out of range"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.zeros(2, 3), "int32 or int64"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.zeros(2, 2, dtype=torch.long), r"idx must be \[B, M\]"),
        (torch.randn(2, 3, 5).int(), torch.randn(2, 4, 5), None, "float32/float16/bfloat16"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5, device="meta"), None, "is on"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.zeros(2, 3, dtype=torch.long, device="meta"), "is on"),
    ],
)
@pytest.mark.parametrize("fn", [masked_l2_loss, ml.masked_l2_loss_triton, ml.masked_jepa_loss,
                                ml.masked_jepa_loss_triton])
def test_bad_input_is_refused_before_any_launch(fn, pred, target, idx, message, monkeypatch):
    monkeypatch.setattr(ml, "_masked_loss_fwd_kernel", None)  # a launch would raise TypeError, not ValueError
    with pytest.raises(ValueError, match=message):
        fn(pred, target, idx)


@pytest.mark.parametrize("fn", [ml.masked_l2_loss_triton, ml.masked_jepa_loss_triton])
def test_triton_refuses_float64(fn):
    with pytest.raises(ValueError, match="float32/float16/bfloat16, got"):
        fn(torch.randn(2, 3, 5), torch.randn(2, 4, 5, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("fn", [masked_l2_loss, ml.masked_jepa_loss,
                                functools.partial(ml.masked_jepa_loss, kind="lp", p=1.0)])
def test_float64_runs_the_reference_in_float64(fn):
    """The peers check in float64: the public functions take it (the reference path) and return float64."""
    pred, target, idx = _inputs(2, 5, 7, 6, torch.float64, seed=2)
    loss = fn(pred, target, idx)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(fn(pred.float(), target.float(), idx).item(), rel=1e-5)
    assert torch.autograd.gradcheck(lambda p: fn(p, target, idx), pred.detach().requires_grad_())


@pytest.mark.parametrize("fn", [masked_l2_loss, ml.masked_jepa_loss, ml.masked_l2_loss_triton,
                                ml.masked_jepa_loss_triton])
def test_list_of_masks_equals_the_stacked_call(fn):
    """I-JEPA: masks_pred is a list of [B, K] masks and its predictor stacks its outputs mask-major."""
    B, K, N, D = 3, 4, 10, 8
    g = torch.Generator().manual_seed(4)
    masks = [torch.randint(0, N, (B, K), generator=g) for _ in range(4)]
    pred, target = torch.randn(4 * B, K, D, generator=g), torch.randn(B, N, D, generator=g)
    assert torch.equal(fn(pred, target, masks), fn(pred, target, torch.cat(masks)))
    with pytest.raises(ValueError, match="one count K"):
        fn(pred[:, :3], target, [masks[0][:, :3], masks[1]])
    with pytest.raises(ValueError, match=r"\[B, K\] index tensors"):
        fn(pred, target, [masks[0][0]] * 4)


@pytest.mark.parametrize("fn,peer", [
    (ml.masked_jepa_loss, lambda z, h: F.smooth_l1_loss(z, h)),
    (functools.partial(ml.masked_jepa_loss, kind="lp", p=1.0), lambda z, h: (z - h).abs().mean()),
])
def test_vjepa_nested_layouts_average_per_mask(fn, peer):
    """V-JEPA: pred and idx lists (one per mask config); V-JEPA 2: groups (one per frames-per-clip setting)
    of such lists, one target per group. Each (prediction, mask) pair weighs equally, as in their loss_fn."""
    g = torch.Generator().manual_seed(9)
    N, D = 12, 8
    groups = [(2, [3, 5]), (4, [2])]  # (batch of the group, K per mask)
    h = [torch.randn(b, N, D, generator=g) for b, _ in groups]
    masks = [[torch.randint(0, N, (b, k), generator=g) for k in ks] for b, ks in groups]
    z = [[torch.randn(b, k, D, generator=g) for k in ks] for b, ks in groups]

    def gathered(hi, m):  # the peer's apply_masks, then its layer norm
        return F.layer_norm(torch.gather(hi, 1, m[..., None].expand(-1, -1, D)), (D,))

    expected = sum(peer(zij, gathered(hi, mij)) for zi, hi, mi in zip(z, h, masks) for zij, mij in zip(zi, mi)) / 3
    torch.testing.assert_close(fn(z, h, masks), expected)
    flat = sum(peer(zj, gathered(h[0], mj)) for zj, mj in zip(z[0], masks[0])) / 2
    torch.testing.assert_close(fn(z[0], h[0], masks[0]), flat)
    for bad_target, bad_idx, message in [(h[0], masks, "target is a list"), (h, masks[0], "group 0"),
                                         (h[0], masks[0][0], "idx must mirror it"), (h, [masks[0]], "idx must mirror")]:
        with pytest.raises(ValueError, match=message):
            fn(z if bad_idx is not masks[0][0] else z[0], bad_target, bad_idx)


@pytest.mark.parametrize("kwargs,message", [({"kind": "l2"}, "kind must be"), ({"target_norm": "batch"}, "target_norm"),
                                            ({"kind": "lp", "p": 0.0}, "p must be > 0")])
@pytest.mark.parametrize("fn", [ml.masked_jepa_loss, ml.masked_jepa_loss_triton])
def test_bad_jepa_options_are_refused(fn, kwargs, message):
    pred, target, idx = _inputs(2, 3, 4, 5, torch.float32, seed=0)
    with pytest.raises(ValueError, match=message):
        fn(pred, target, idx, **kwargs)


# ---- torch.library / torch.compile --------------------------------------------------------------------------


@pytest.mark.parametrize("kind,layer_norm,p,idx_form", [(ml._L2, False, 1.0, "int32"), (ml._SMOOTH_L1, True, 1.0, None),
                                                        (ml._LP, True, 1.5, "expanded"),
                                                        (ml._L2, False, 1.0, "broadcast")])
def test_custom_op_passes_opcheck(kind, layer_norm, p, idx_form):
    pred, target, idx = _inputs(2, 5, 9, 7, torch.float32, seed=6)
    idx = {"int32": idx.int(), "expanded": idx[0].expand(2, 5), None: None, "broadcast": idx}[idx_form]
    target = target if idx is not None else target[:, :5]
    target = target[:1] if idx_form == "broadcast" else target  # one target sample for both prediction rows
    torch.library.opcheck(ml._masked_latent_loss_op, (pred, target, idx, kind, layer_norm, p, True))


@pytest.mark.parametrize("mode,backend", [("auto", "inductor"), ("triton", "aot_eager")])
def test_compile_fullgraph_matches_eager(mode, backend):
    """auto on CPU compiles the reference with Inductor; the Triton path traces through the custom op (Inductor
    around it is exercised by the GPU test)."""
    torch._dynamo.reset()
    pred, target, idx = _inputs(2, 5, 9, 7, torch.float32, seed=8)
    with kernel_mode(mode):
        for reference, fn in [(ml.masked_l2_loss_reference, ml.masked_l2_loss),
                              (functools.partial(ml.masked_jepa_loss_reference, kind="lp"),
                               functools.partial(ml.masked_jepa_loss, kind="lp"))]:
            _assert_match(reference, torch.compile(fn, fullgraph=True, backend=backend), pred, target, idx)


# ---- GPU ----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,M,N,D", [(64, 147, 196, 768), (32, 1176, 1568, 384), (128, 784, 1568, 96),
                                     (16, 300, 400, 1000)])
@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_gpu_triton_matches_reference_and_is_deterministic(name, reference, triton_fn, dtype, B, M, N, D):
    pred, target, idx = (t.cuda() for t in _inputs(B, M, N, D, dtype, seed=D))
    pred = pred.detach().requires_grad_()
    _assert_match(reference, triton_fn, pred, target, idx, name)
    out, again = (_loss_and_grad(triton_fn, pred, target, idx) for _ in range(2))
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    torch._dynamo.reset()  # each case compiles the same functions anew: stay under the recompile limit
    _assert_match(reference, torch.compile(triton_fn, fullgraph=True), pred, target, idx, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_public_functions_run_the_kernel_and_refuse_bad_idx():
    pred, target, idx = (t.cuda() for t in _inputs(4, 50, 60, 96, torch.bfloat16, seed=0))
    assert ml.masked_l2_loss(pred, target, idx).item() == pytest.approx(
        ml.masked_l2_loss_triton(pred, target, idx).item(), abs=0)
    with pytest.raises(ValueError, match="out of range"):
        ml.masked_jepa_loss(pred, target, idx + 60)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,reference,triton_fn", LOSSES[:2], ids=LOSS_IDS[:2])
def test_gpu_broadcast_target(name, reference, triton_fn):
    """I-JEPA's layout at ViT-B width: 4 x 2 mask blocks of 32 images against 32 targets."""
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(256, 49, 768, generator=g).to(torch.bfloat16).cuda().requires_grad_()
    target = torch.randn(32, 196, 768, generator=g).to(torch.bfloat16).cuda()
    idx = torch.randint(0, 196, (256, 49), generator=g).cuda()
    _assert_match(reference, triton_fn, pred, target, idx, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_single_token(dtype):
    """One token (B = M = 1): the L2 loss's denominator, the batch and the target batch are integer arguments
    equal to 1, which Triton compiles as constants (``.to()`` on one fails, triton#2939)."""
    pred, target, idx = (t.cuda() for t in _inputs(1, 1, 3, 2, dtype, seed=0))
    pred = pred.detach().requires_grad_()
    _assert_match(ml.masked_l2_loss_reference, ml.masked_l2_loss_triton, pred, target, idx)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_backward_scale_kernel_equals_torch_product(dtype):
    """On a GPU the Triton product rounds like torch's: equal bit for bit, ragged last block included (-2.5 is
    exact in every dtype, so it holds whether or not torch first rounds the scale to the tensor's dtype)."""
    grad = torch.randn(3 * ml.masked_loss_launch((1, 1), dtype, "cuda").scale_block + 37, device="cuda").to(dtype)
    grad_loss = torch.tensor(-2.5, device="cuda")
    assert torch.equal(ml._scaled_gradient(grad, grad_loss), grad * grad_loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tiles,stages,split", [(8, 3, False), (1, 1, True), (4, 2, True)])
@pytest.mark.parametrize("name,reference,triton_fn", LOSSES, ids=LOSS_IDS)
def test_gpu_software_pipelined_programs_and_split_rows(name, reference, triton_fn, tiles, stages, split):
    """The sweep's pipelined launch settings (loads as asynchronous copies into shared memory) and split rows
    (768 = 512 + 256 columns) against the reference: rows not a multiple of a program's tiles, odd D, a
    target batch dividing the prediction's."""
    for B, M, N, D, Bt in [(24, 147, 196, 768, 24), (16, 301, 400, 1000, 4)]:
        g = torch.Generator().manual_seed(D + tiles)
        pred = torch.randn(B, M, D, generator=g).to(torch.bfloat16).cuda().requires_grad_()
        target = torch.randn(Bt, N, D, generator=g).to(torch.bfloat16).cuda()
        idx = torch.randint(0, N, (B, M), generator=g).cuda()
        launch = ml.masked_loss_launch(pred.shape, pred.dtype, pred.device, tile_elements=1024, tiles=tiles,
                                       stages=stages, split_rows=split)
        _assert_match(reference, functools.partial(triton_fn, launch=launch), pred, target, idx, name)
