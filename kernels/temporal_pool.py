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

import functools
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import torch
import triton
import triton.language as tl

from . import launch as _host
from .dispatch import use_triton
from .launch import cdiv, next_power_of_2

MAX_WINDOW = 16  # the kernels' documented scope; beyond it the public function runs the reference
MAX_HEAD_DIM = 128


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


@dataclass(frozen=True)
class TemporalPoolLaunch:
    """How the pooling kernels launch (``temporal_pool_launch`` computes it from the shape)."""

    kp: int  # the window rounded up to a power of two
    block_d: int  # Dh rounded up to a power of two
    block_p: int  # forward: positions per program (a power of two)
    num_warps: int
    bwd_block_p: int  # backward: positions per program
    bwd_num_warps: int


# fp32 elements per loaded [BLOCK_P, window, Dh] tile (forward, backward) and warps on CUDA: on an H200
# (``benchmarks.sweep_launch``, 2026-11-30) the backward takes 0.34 ms at 4096 against 0.60 ms at 2048, and the
# forward is flat from 4096 on.
# The interpreter costs ~3 ms per program, so on other devices the tiles are large (the tests shrink them to
# cover many programs and ragged tails) and the warps 4.
_TILE_ELEMENTS = {"cuda": (4096, 4096), "cpu": (65536, 65536)}


@functools.lru_cache(maxsize=1024)
def temporal_pool_launch(shape: Sequence[int], window: int, dtype: torch.dtype, device: torch.device | str, *,
                         tile_elements: tuple[int, int] | None = None,
                         warps: tuple[int, int] = (4, 4)) -> TemporalPoolLaunch:
    """The launch for keys of ``shape`` ``[B, T, N, H, Dh]`` pooled over ``window`` steps on ``device`` (a pure
    function, cached; ``dtype`` does not enter the rules: tiles are fp32 in registers). Positions per program
    from a fixed tile budget: ``tile_elements`` (forward, backward; None: 4,096 each on CUDA, 65,536 under the
    interpreter), never more than the positions there are; ``warps`` (forward, backward) on CUDA, 4 elsewhere."""
    B, T, N, _, Dh = shape
    M = B * (T // window) * N
    cuda = torch.device(device).type == "cuda"
    budget = tile_elements or _TILE_ELEMENTS["cuda" if cuda else "cpu"]
    KP, BLOCK_D = next_power_of_2(window), next_power_of_2(Dh)
    fwd, bwd = (max(1, min(b // (KP * BLOCK_D), next_power_of_2(M))) for b in budget)
    fwd_warps, bwd_warps = warps if cuda else (4, 4)
    return TemporalPoolLaunch(KP, BLOCK_D, fwd, fwd_warps, bwd, bwd_warps)


def _resolve(launch: TemporalPoolLaunch | Sequence[int] | None, k: torch.Tensor, window: int) -> TemporalPoolLaunch:
    """``launch`` as given (a ``TemporalPoolLaunch`` or the custom op's list of its fields), else computed."""
    if launch is None:
        return temporal_pool_launch(k.shape, window, k.dtype, k.device)
    if not isinstance(launch, TemporalPoolLaunch):
        launch = TemporalPoolLaunch(*launch)
    if launch.kp < window or launch.block_d < k.shape[4]:
        raise ValueError(f"launch {launch} does not cover window {window} and Dh {k.shape[4]}")
    return launch


def _fields(launch: TemporalPoolLaunch | None) -> list[int] | None:
    """``launch`` as the custom ops take it."""
    return None if launch is None else list(astuple(launch))


def _common(q, k, v, window, visible):
    B, T, N, H, Dh = k.shape
    W = T // window
    M = B * W * N
    vis = k if visible is None else visible.view(torch.uint8)  # a dummy pointer when there is no mask
    vstrides = (0, 0, 0) if visible is None else vis.stride()
    meta = dict(WINDOW=window, HAS_VIS=visible is not None, SCALE=1.0 / math.sqrt(Dh))
    return (B, T, N, H, Dh, W, M), q.contiguous(), vis, vstrides, meta


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None,
             launch: TemporalPoolLaunch | Sequence[int] | None = None) -> torch.Tensor:
    (B, T, N, H, Dh, W, M), q, vis, vstrides, meta = _common(q, k, v, window, visible)
    launch = _resolve(launch, k, window)
    out = _host.empty((B, W, N, H, Dh), v.dtype, v.device)
    grid = (cdiv(M, launch.block_p) * H,)
    _pool_fwd_kernel[grid](q, k, v, vis, out, M, N, W, H, Dh, *k.stride(), *v.stride(), *vstrides,
                           KP=launch.kp, BLOCK_P=launch.block_p, BLOCK_D=launch.block_d, num_warps=launch.num_warps,
                           **meta)
    return out


def _backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None,
              grad: torch.Tensor, launch: TemporalPoolLaunch | Sequence[int] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    (B, T, N, H, Dh, W, M), qc, vis, vstrides, meta = _common(q, k, v, window, visible)
    launch = _resolve(launch, k, window)
    blocks = cdiv(M, launch.bwd_block_p)
    dq_part = _host.empty((blocks, H, Dh), torch.float32, k.device)
    dk, dv = _host.empty(k.shape, k.dtype, k.device), _host.empty(v.shape, v.dtype, v.device)
    _pool_bwd_kernel[(blocks * H,)](qc, k, v, vis, grad, dq_part, dk, dv, M, N, W, H, Dh, *k.stride(), *v.stride(),
                                    *vstrides, *grad.stride(), KP=launch.kp, BLOCK_P=launch.bwd_block_p,
                                    BLOCK_D=launch.block_d, num_warps=launch.bwd_num_warps, **meta)
    return dq_part.sum(0).to(q.dtype), dk, dv  # ordered reduction over a fixed shape: deterministic


# ------------------------------------- custom ops (torch.compile) and the eager autograd.Function

# launch: the fields of a ``TemporalPoolLaunch`` (None: computed)
_SCHEMA = "(Tensor q, Tensor k, Tensor v, int window, Tensor? visible, int[]? launch=None) -> Tensor"
_BWD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, int window, Tensor? visible, Tensor grad, int[]? launch=None) -> "
               "(Tensor, Tensor, Tensor)")


@torch.library.custom_op("hjepa_fast::temporal_attention_pool", mutates_args=(), device_types=("cpu", "cuda"),
                         schema=_SCHEMA)
def _pool_op(q, k, v, window, visible, launch=None):
    return _forward(q, k, v, window, visible, launch)


@_pool_op.register_fake
def _(q, k, v, window, visible, launch=None):
    B, T, N, H, Dh = k.shape
    return v.new_empty((B, T // window, N, H, Dh))


@torch.library.custom_op("hjepa_fast::temporal_attention_pool_backward", mutates_args=(),
                         device_types=("cpu", "cuda"), schema=_BWD_SCHEMA)
def _pool_bwd_op(q, k, v, window, visible, grad, launch=None):
    return _backward(q, k, v, window, visible, grad, launch)


@_pool_bwd_op.register_fake
def _(q, k, v, window, visible, grad, launch=None):
    return torch.empty_like(q), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, window, visible, launch = inputs
    ctx.window, ctx.launch = window, launch
    ctx.save_for_backward(q, k, v, visible)


def _pool_grads(ctx, grad, backward=_pool_bwd_op):
    q, k, v, visible = ctx.saved_tensors
    dq, dk, dv = backward(q, k, v, ctx.window, visible, grad, ctx.launch)
    return dq, dk, dv, None, None, None


_pool_op.register_autograd(_pool_grads, setup_context=_setup_context)


class _Pool(torch.autograd.Function):
    """The eager door to the same kernels: an autograd.Function skips the custom op's dispatcher (1.7x less
    host time per forward + backward, ``benchmarks.bench_host_overhead``); torch.compile takes the custom op."""

    @staticmethod
    def forward(ctx, q, k, v, window: int, visible, launch: TemporalPoolLaunch | None):
        launch = _resolve(launch, k, window)
        _setup_context(ctx, (q, k, v, window, visible, launch), None)
        return _forward(q, k, v, window, visible, launch)

    @staticmethod
    def backward(ctx, grad):
        return _pool_grads(ctx, grad, _backward)


# ----------------------------------------------------------------------------------------- public API


def temporal_attention_pool_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None = None, *,
    launch: TemporalPoolLaunch | None = None,
) -> torch.Tensor:
    """Always the Triton kernels (forward and backward), on CUDA or under ``TRITON_INTERPRET=1``; same
    contract as the reference, plus window <= 16, Dh <= 128, one device, bool ``visible``. ``launch``: the
    kernels' launch settings (None: ``temporal_pool_launch`` of k's shape, dtype and device)."""
    _check(q, k, v, window, visible)
    _check_triton(q, k, v, window, visible)
    return _launch(q, k, v, window, visible, launch)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None,
            launch: TemporalPoolLaunch | None) -> torch.Tensor:
    """The checked inputs to the kernels: through the custom op under torch.compile, else the Function."""
    if torch.compiler.is_compiling():
        return _pool_op(q, k, v, window, visible, _fields(launch))
    return _Pool.apply(q, k, v, window, visible, launch)


def temporal_attention_pool(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, visible: torch.Tensor | None = None, *,
    launch: TemporalPoolLaunch | None = None,
) -> torch.Tensor:
    """Functional entry point (see the reference for shapes): the Triton kernels where ``use_triton``
    says so and the shape is in their scope, the reference otherwise (``launch`` as
    ``temporal_attention_pool_triton``, unused there)."""
    _check(q, k, v, window, visible)
    if use_triton(k) and window <= MAX_WINDOW and k.shape[4] <= MAX_HEAD_DIM:
        _check_triton(q, k, v, window, visible)
        return _launch(q, k, v, window, visible, launch)
    return temporal_attention_pool_reference(q, k, v, window, visible)
