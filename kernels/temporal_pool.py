"""Temporal attention pooling: one learnable query per head attends over the ``window`` time steps of
each window, per spatial token. The bridge between H-JEPA levels.

Eager PyTorch materialises scores, softmax and weights for millions of attention problems with 4-16
keys each; the Triton kernels read each key and value once and keep the softmax in registers.

Layout of the kernels: a *row* is one (position, head) pair, position = (b, window w, token n). A
program owns ``BLOCK_P`` positions of one head and loads their whole window as a
``[BLOCK_P, window, Dh]`` tile (broadcast-multiply + ``tl.sum``: ``tl.dot`` needs dims >= 16). Grid
axis 0 = position blocks x heads, heads fastest, so neighbouring programs read neighbouring memory.
The query gradient is shared by every row: each program writes its partial sum for its head, and a
fixed-shape ``sum`` over programs finishes it (deterministic, no atomics).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .dispatch import use_triton
from .launch import cdiv, next_power_of_2

MAX_WINDOW = 16  # the kernels' documented scope; beyond it the public function runs the reference
MAX_HEAD_DIM = 128
POISON_OUTPUTS = False  # tests set it: kernel outputs start as NaN, so an unwritten element fails
# fp32 elements per loaded [BLOCK_P, window, Dh] tile, (forward, backward). The interpreter costs ~3 ms per
# program, so on CPU the tiles are large (tests shrink them to cover many programs and ragged tails).
# (H200, ``benchmarks.sweep_launch`` run 2: backward 0.34 ms at 4096 against 0.60 ms at 2048; forward flat from 4096)
TILE_ELEMENTS = {"cuda": (4096, 4096), "cpu": (65536, 65536)}
CUDA_WARPS = (4, 4)  # (forward, backward)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None) -> None:
    if k.dim() != 5 or v.shape != k.shape:
        raise ValueError(f"k and v must both be [B, T, N, H, Dh], got {tuple(k.shape)} and {tuple(v.shape)}")
    H, Dh = k.shape[3], k.shape[4]
    if q.shape != (H, Dh):
        raise ValueError(f"q must be [H, Dh] = {(H, Dh)}, got {tuple(q.shape)}")
    if window < 1 or k.shape[1] % window:
        raise ValueError(f"T = {k.shape[1]} must be a positive multiple of window = {window}")
    if visible is not None and visible.shape != k.shape[:3]:
        raise ValueError(f"visible must be [B, T, N] = {tuple(k.shape[:3])}, got {tuple(visible.shape)}")


def _check_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                  visible: torch.Tensor | None) -> None:
    """What the kernels support beyond the shape contract (``_check``, run first)."""
    if window > MAX_WINDOW or k.shape[4] > MAX_HEAD_DIM:
        raise ValueError(f"the Triton kernel supports window <= {MAX_WINDOW} and Dh <= {MAX_HEAD_DIM}, "
                         f"got window {window} and Dh {k.shape[4]}")
    tensors = {"q": q, "k": k, "v": v} | ({} if visible is None else {"visible": visible})
    if len({t.device for t in tensors.values()}) != 1:
        raise ValueError(f"all inputs must be on one device, got { {n: str(t.device) for n, t in tensors.items()} }")
    for name in ("q", "k", "v"):
        if not tensors[name].is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensors[name].dtype}")
    if visible is not None and visible.dtype != torch.bool:
        raise ValueError(f"visible must be a bool tensor, got {visible.dtype}")


def temporal_attention_pool_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """q ``[H, Dh]``, k/v ``[B, T, N, H, Dh]`` -> ``[B, T // window, N, H, Dh]``; softmax in float32.

    ``visible`` ``[B, T, N]`` (bool) hides keys: a window partly held out pools only what is visible,
    a window with nothing visible returns zeros (the caller substitutes a learned "empty" token)."""
    _check(q, k, v, window, visible)
    B, T, N, H, Dh = k.shape
    kw = k.reshape(B, T // window, window, N, H, Dh).float()
    vw = v.reshape(B, T // window, window, N, H, Dh).float()
    scores = torch.einsum("bwknhd,hd->bwknh", kw, q.float()) / math.sqrt(Dh)
    if visible is not None:
        vis = visible.reshape(B, T // window, window, N, 1)
        # a large finite fill keeps all-hidden windows free of NaN in forward and backward
        weights = torch.softmax(scores.masked_fill(~vis, -1e30), dim=2) * vis.any(dim=2, keepdim=True)
    else:
        weights = torch.softmax(scores, dim=2)
    out = torch.einsum("bwknh,bwknhd->bwnhd", weights, vw)
    return out.to(v.dtype)


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _softmax_tile(q_ptr, k_ptr, vis_ptr, h, p, M, N, W, Dh,
                  skb, skt, skn, skh, skd, sVb, sVt, sVn,
                  WINDOW: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr, HAS_VIS: tl.constexpr,
                  SCALE: tl.constexpr):
    """Loads the keys of positions ``p`` (head ``h``) and returns (keys [P, KP, D] fp32, weights
    [P, KP] fp32 with hidden, padded and all-hidden entries exactly 0, q [D] fp32, window-index
    offsets [P, KP] = b, t, n parts shared with v, d offsets)."""
    pmask = p < M
    n = p % N
    bw = p // N
    w = bw % W
    b = bw // W
    j = tl.arange(0, KP)
    d = tl.arange(0, BLOCK_D)
    jmask = j < WINDOW
    dmask = d < Dh
    t = w[:, None] * WINDOW + j[None, :]  # [P, KP]
    valid = pmask[:, None] & jmask[None, :]
    m3 = valid[:, :, None] & dmask[None, None, :]
    k_off = (b * skb + n * skn)[:, None, None] + (t * skt)[:, :, None] + h * skh + (d * skd)[None, None, :]
    kk = tl.load(k_ptr + k_off, mask=m3, other=0.0).to(tl.float32)
    qv = tl.load(q_ptr + h * Dh + d, mask=dmask, other=0.0).to(tl.float32)
    s = tl.sum(kk * qv[None, None, :], axis=2) * SCALE
    if HAS_VIS:
        seen = tl.load(vis_ptr + (b * sVb + n * sVn)[:, None] + t * sVt, mask=valid, other=0) != 0
        s = tl.where(seen, s, -1e30)  # the reference's fill: hidden keys get weight exactly 0
        any_seen = tl.max(seen.to(tl.int32), axis=1) > 0
    s = tl.where(jmask[None, :], s, float("-inf"))
    e = tl.exp(s - tl.max(s, axis=1)[:, None])
    wts = e / tl.sum(e, axis=1)[:, None]
    if HAS_VIS:
        wts = tl.where(any_seen[:, None], wts, 0.0)
    wts = tl.where(valid, wts, 0.0)
    return kk, wts, qv, b, t, n, d, m3


@triton.jit
def _pool_fwd_kernel(q_ptr, k_ptr, v_ptr, vis_ptr, o_ptr, M, N, W, H, Dh,
                     skb, skt, skn, skh, skd, svb, svt, svn, svh, svd, sVb, sVt, sVn,
                     WINDOW: tl.constexpr, KP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                     HAS_VIS: tl.constexpr, SCALE: tl.constexpr):
    pid = tl.program_id(0)
    h = pid % H
    p = (pid // H).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    kk, wts, qv, b, t, n, d, m3 = _softmax_tile(q_ptr, k_ptr, vis_ptr, h, p, M, N, W, Dh, skb, skt, skn, skh, skd,
                                                sVb, sVt, sVn, WINDOW, KP, BLOCK_D, HAS_VIS, SCALE)
    v_off = (b * svb + n * svn)[:, None, None] + (t * svt)[:, :, None] + h * svh + (d * svd)[None, None, :]
    vv = tl.load(v_ptr + v_off, mask=m3, other=0.0).to(tl.float32)
    out = tl.sum(wts[:, :, None] * vv, axis=1)  # [P, D]
    o_off = (p * H + h)[:, None] * Dh + d[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=(p < M)[:, None] & (d < Dh)[None, :])


@triton.jit
def _pool_bwd_kernel(q_ptr, k_ptr, v_ptr, vis_ptr, g_ptr, dq_part_ptr, dk_ptr, dv_ptr, M, N, W, H, Dh,
                     skb, skt, skn, skh, skd, svb, svt, svn, svh, svd, sVb, sVt, sVn,
                     sgb, sgw, sgn, sgh, sgd,
                     WINDOW: tl.constexpr, KP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                     HAS_VIS: tl.constexpr, SCALE: tl.constexpr):
    pid = tl.program_id(0)
    h = pid % H
    pb = pid // H
    p = pb.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    kk, wts, qv, b, t, n, d, m3 = _softmax_tile(q_ptr, k_ptr, vis_ptr, h, p, M, N, W, Dh, skb, skt, skn, skh, skd,
                                                sVb, sVt, sVn, WINDOW, KP, BLOCK_D, HAS_VIS, SCALE)
    v_off = (b * svb + n * svn)[:, None, None] + (t * svt)[:, :, None] + h * svh + (d * svd)[None, None, :]
    vv = tl.load(v_ptr + v_off, mask=m3, other=0.0).to(tl.float32)
    w = (p // N) % W
    g_off = (b * sgb + w * sgw + n * sgn + h * sgh)[:, None] + (d * sgd)[None, :]
    g = tl.load(g_ptr + g_off, mask=(p < M)[:, None] & (d < Dh)[None, :], other=0.0).to(tl.float32)
    dp = tl.sum(vv * g[:, None, :], axis=2)  # [P, KP]: d out / d weight
    ds = wts * (dp - tl.sum(wts * dp, axis=1)[:, None]) * SCALE  # d out / d (q.k); 0 where the weight is 0
    # outputs dk, dv are contiguous [B, T, N, H, Dh]
    x_off = (((b * (W * WINDOW))[:, None] + t) * N + n[:, None]) * H + h
    x_off = x_off[:, :, None] * Dh + d[None, None, :]
    tl.store(dv_ptr + x_off, (wts[:, :, None] * g[:, None, :]).to(dv_ptr.dtype.element_ty), mask=m3)
    tl.store(dk_ptr + x_off, (ds[:, :, None] * qv[None, None, :]).to(dk_ptr.dtype.element_ty), mask=m3)
    dq = tl.sum(tl.sum(ds[:, :, None] * kk, axis=1), axis=0)  # [D]
    tl.store(dq_part_ptr + (pb * H + h) * Dh + d, dq, mask=d < Dh)


# ----------------------------------------------------------------------------------------- launch


def _launch_config(M: int, window: int, Dh: int, device: torch.device, backward: bool) -> tuple[int, int, int, int]:
    """(KP, BLOCK_D, BLOCK_P, num_warps): positions per program from a fixed tile budget (TILE_ELEMENTS)."""
    KP, BLOCK_D = next_power_of_2(window), next_power_of_2(Dh)
    budget = TILE_ELEMENTS["cuda" if device.type == "cuda" else "cpu"][backward]
    BLOCK_P = max(1, min(budget // (KP * BLOCK_D), next_power_of_2(M)))
    return KP, BLOCK_D, BLOCK_P, CUDA_WARPS[backward] if device.type == "cuda" else 4


def _out(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _common(q, k, v, window, visible):
    B, T, N, H, Dh = k.shape
    W = T // window
    M = B * W * N
    vis = k if visible is None else visible.view(torch.uint8)  # a dummy pointer when there is no mask
    vstrides = (0, 0, 0) if visible is None else vis.stride()
    meta = dict(WINDOW=window, HAS_VIS=visible is not None, SCALE=1.0 / math.sqrt(Dh))
    return (B, T, N, H, Dh, W, M), q.contiguous(), vis, vstrides, meta


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
             visible: torch.Tensor | None) -> torch.Tensor:
    (B, T, N, H, Dh, W, M), q, vis, vstrides, meta = _common(q, k, v, window, visible)
    out = _out((B, W, N, H, Dh), v, v.dtype)
    KP, BLOCK_D, BLOCK_P, warps = _launch_config(M, window, Dh, k.device, backward=False)
    grid = (cdiv(M, BLOCK_P) * H,)
    _pool_fwd_kernel[grid](q, k, v, vis, out, M, N, W, H, Dh, *k.stride(), *v.stride(), *vstrides,
                           KP=KP, BLOCK_P=BLOCK_P, BLOCK_D=BLOCK_D, num_warps=warps, **meta)
    return out


def _backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None,
              grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    (B, T, N, H, Dh, W, M), qc, vis, vstrides, meta = _common(q, k, v, window, visible)
    KP, BLOCK_D, BLOCK_P, warps = _launch_config(M, window, Dh, k.device, backward=True)
    blocks = cdiv(M, BLOCK_P)
    dq_part = _out((blocks, H, Dh), k, torch.float32)
    dk, dv = _out(k.shape, k, k.dtype), _out(v.shape, v, v.dtype)
    _pool_bwd_kernel[(blocks * H,)](qc, k, v, vis, grad, dq_part, dk, dv, M, N, W, H, Dh, *k.stride(), *v.stride(),
                                    *vstrides, *grad.stride(), KP=KP, BLOCK_P=BLOCK_P, BLOCK_D=BLOCK_D,
                                    num_warps=warps, **meta)
    return dq_part.sum(0).to(q.dtype), dk, dv  # ordered reduction over a fixed shape: deterministic


# ------------------------------------- custom ops (torch.compile) and the eager autograd.Function

_SCHEMA = "(Tensor q, Tensor k, Tensor v, int window, Tensor? visible) -> Tensor"
_BWD_SCHEMA = "(Tensor q, Tensor k, Tensor v, int window, Tensor? visible, Tensor grad) -> (Tensor, Tensor, Tensor)"


@torch.library.custom_op("hjepa_fast::temporal_attention_pool", mutates_args=(), device_types=("cpu", "cuda"),
                         schema=_SCHEMA)
def _pool_op(q, k, v, window, visible):
    return _forward(q, k, v, window, visible)


@_pool_op.register_fake
def _(q, k, v, window, visible):
    B, T, N, H, Dh = k.shape
    return v.new_empty((B, T // window, N, H, Dh))


@torch.library.custom_op("hjepa_fast::temporal_attention_pool_backward", mutates_args=(),
                         device_types=("cpu", "cuda"), schema=_BWD_SCHEMA)
def _pool_bwd_op(q, k, v, window, visible, grad):
    return _backward(q, k, v, window, visible, grad)


@_pool_bwd_op.register_fake
def _(q, k, v, window, visible, grad):
    return torch.empty_like(q), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, window, visible = inputs
    ctx.window = window
    ctx.save_for_backward(q, k, v, visible)


def _pool_grads(ctx, grad, backward=_pool_bwd_op):
    q, k, v, visible = ctx.saved_tensors
    dq, dk, dv = backward(q, k, v, ctx.window, visible, grad)
    return dq, dk, dv, None, None


_pool_op.register_autograd(_pool_grads, setup_context=_setup_context)


class _Pool(torch.autograd.Function):
    """The eager door to the same kernels: an autograd.Function skips the custom op's dispatcher (1.7x less
    host time per forward + backward, ``benchmarks.bench_host_overhead``); torch.compile takes the custom op."""

    @staticmethod
    def forward(ctx, q, k, v, window: int, visible):
        _setup_context(ctx, (q, k, v, window, visible), None)
        return _forward(q, k, v, window, visible)

    @staticmethod
    def backward(ctx, grad):
        return _pool_grads(ctx, grad, _backward)


# ----------------------------------------------------------------------------------------- public API


def temporal_attention_pool_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """Always the Triton kernels (forward and backward), on CUDA or under ``TRITON_INTERPRET=1``; same
    contract as the reference, plus window <= 16, Dh <= 128, one device, bool ``visible``."""
    _check(q, k, v, window, visible)
    _check_triton(q, k, v, window, visible)
    return _launch(q, k, v, window, visible)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
            visible: torch.Tensor | None) -> torch.Tensor:
    """The checked inputs to the kernels: through the custom op under torch.compile, else the Function."""
    if torch.compiler.is_compiling():
        return _pool_op(q, k, v, window, visible)
    return _Pool.apply(q, k, v, window, visible)


def temporal_attention_pool(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """Functional entry point (see the reference for shapes): the Triton kernels where ``use_triton``
    says so and the shape is in their scope, the reference otherwise."""
    _check(q, k, v, window, visible)
    if use_triton(k) and window <= MAX_WINDOW and k.shape[4] <= MAX_HEAD_DIM:
        _check_triton(q, k, v, window, visible)
        return _launch(q, k, v, window, visible)
    return temporal_attention_pool_reference(q, k, v, window, visible)
