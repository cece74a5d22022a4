"""Masked-token latent losses: the loss every H-JEPA level computes, and the I-JEPA / V-JEPA losses.

- ``masked_l2_loss``: mean over the B*M predicted tokens of || p/||p|| - t/||t|| ||^2 (H-JEPA);
- ``masked_jepa_loss``: target layer-normalised over D (no affine, eps 1e-5), then smooth L1 (beta 1,
  I-JEPA) or ``mean(|pred - target|^p) / p`` (V-JEPA), both a mean over all B*M*D elements.

``t`` is gathered from the target encoder's output at the target indices; gradient flows to ``pred``
only. The target's batch may divide the prediction's: prediction row ``b`` reads target sample ``b % B_t``
(I-JEPA stacks the predictions of every mask along the batch, mask-major, against one target per image:
one call, and no repeated copy of the targets).

Eager PyTorch spends a pass over memory on the gather, each normalisation, the difference and the
reduction, and as many again backward. The Triton kernel reads each prediction row and its gathered
target row once and, in the same pass, writes the per-program partial loss and the gradient wrt
``pred`` (Liger-Kernel's cross-entropy trick); backward only scales that gradient by ``grad_output`` (a
second, streaming kernel).
A *row* is one token: a tile is ``BLOCK_R`` whole rows in registers, each one power-of-two chunk (the
tail of D masked) or, with ``split_rows``, two; a program takes ``TILES`` consecutive tiles,
software-pipelined when ``STAGES`` > 1 (the next tiles' loads in flight, through shared memory, while one
is computed). Partial sums per program plus a fixed-shape ``sum`` keep the loss deterministic (no
atomics). ``torch.compile`` reaches the kernel through a ``torch.library.custom_op``, eager calls through
an ``autograd.Function`` (less host time).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import launch as _host
from .dispatch import use_triton
from .launch import cdiv, next_power_of_2

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the Triton kernel's
_REFERENCE_DTYPES = (*_FLOAT_DTYPES, torch.float64)  # the peers run float64 checks: the reference takes it
# idx as the peers lay it out: one tensor, or I-JEPA's list of [B, K] masks (stacked mask-major)
Index = torch.Tensor | Sequence[torch.Tensor] | None
MAX_D = 16384  # whole rows live in registers; beyond it the public functions run the reference
_L2, _SMOOTH_L1, _LP = 0, 1, 2  # kernel loss kinds
_JEPA_KINDS = {"smooth_l1": _SMOOTH_L1, "lp": _LP}


def _check(pred: torch.Tensor, target: torch.Tensor, idx: Index, check_idx: bool | None = None,
           dtypes: tuple[torch.dtype, ...] = _FLOAT_DTYPES) -> torch.Tensor | None:
    """Validate shapes, dtypes, devices and index range; return ``idx`` as ``[B, M]``.

    idx: ``[B, M]``, ``[M]``, or a list of ``[B_i, M]`` masks concatenated along the batch (I-JEPA's
    ``masks_pred``, mask-major, as its predictor stacks its outputs). check_idx: True checks the range with
    one host sync (a ValueError naming the bad values); False skips it; None (default) checks without a
    host sync: a device-side assert on CUDA, the same check as True on CPU."""
    if pred.dim() != 3:
        raise ValueError(f"pred must be [B, M, D], got shape {tuple(pred.shape)}")
    if target.dim() != 3:
        raise ValueError(f"target must be [B, N, D], got shape {tuple(target.shape)}")
    if pred.dtype not in dtypes or target.dtype not in dtypes:
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"pred and target must be {names}, got {pred.dtype}, {target.dtype}")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target is on {target.device}")
    B, M, D = pred.shape
    Bt = target.shape[0]
    if target.shape[2] != D or not (Bt == B or (Bt > 0 and B % Bt == 0)):
        raise ValueError(f"target {tuple(target.shape)} does not match pred {tuple(pred.shape)}: D must agree and "
                         f"target's batch must equal pred's or divide it (pred row b reads target sample b % {Bt})")
    if D == 0:
        raise ValueError("pred and target need D >= 1 features")
    if idx is None:
        if target.shape[1] != M:
            raise ValueError(f"without idx, target must be [B_t, M, D] = {(Bt, M, D)}, got {tuple(target.shape)}")
        return None
    if isinstance(idx, (list, tuple)):
        idx = _stack_masks(idx)
    if not isinstance(idx, torch.Tensor):
        raise ValueError(f"idx must be a tensor [B, M] or [M], or a list of [B_i, M] tensors; got {type(idx).__name__}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be int32 or int64, got {idx.dtype}")
    if idx.device != pred.device:
        raise ValueError(f"idx is on {idx.device} but pred is on {pred.device}")
    if idx.dim() == 1:
        idx = idx.unsqueeze(0).expand(B, -1)
    if idx.shape != (B, M):
        raise ValueError(f"idx must be [B, M] = {(B, M)} or [M], got {tuple(idx.shape)}")
    N = target.shape[1]
    if check_idx is False or not idx.numel():
        return idx
    if torch.compiler.is_compiling() or (check_idx is None and idx.is_cuda):  # no host sync: an async assert
        torch._assert_async(((idx >= 0) & (idx < N)).all(), "idx out of range")
    else:
        lo, hi = torch.stack(torch.aminmax(idx)).tolist()  # one host sync
        if lo < 0 or hi >= N:
            raise ValueError(f"idx out of range [0, {N}): min {lo}, max {hi}")
    return idx


def _stack_masks(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """I-JEPA's list of ``[B, K]`` masks -> ``[len * B, K]``, mask-major (``torch.cat`` along the batch)."""
    if not masks or not all(isinstance(m, torch.Tensor) and m.dim() == 2 for m in masks):
        raise ValueError("a list idx must hold [B, K] index tensors (I-JEPA's masks, stacked mask-major); got "
                         f"{[tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__ for m in masks]}")
    if len({m.shape[1] for m in masks}) != 1:
        raise ValueError(f"the masks of a list idx must keep one count K, got {[m.shape[1] for m in masks]}")
    return torch.cat(list(masks), dim=0)


def _gather(target: torch.Tensor, idx: torch.Tensor | None, batch: int) -> torch.Tensor:
    """The target rows ``[batch, M, D]`` (detached): row ``b`` from sample ``b % B_t``, at ``idx[b]``."""
    target = target.detach()
    if idx is None:
        return target if target.shape[0] == batch else target.repeat(batch // target.shape[0], 1, 1)
    samples = torch.arange(batch, device=idx.device).unsqueeze(1) % target.shape[0]
    return target[samples, idx]


def _check_and_gather(pred: torch.Tensor, target: torch.Tensor, idx: Index,
                      check_idx: bool | None = None) -> torch.Tensor:
    """Validate (see ``_check``, float64 allowed); return the target rows ``[B, M, D]``, detached."""
    return _gather(target, _check(pred, target, idx, check_idx, _REFERENCE_DTYPES), pred.shape[0])


def _compute_dtype(pred: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs (the reference computes in it and returns it)."""
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def _check_jepa_args(target_norm: str | None, kind: str, p: float) -> None:
    if target_norm not in ("layer", None):
        raise ValueError(f"target_norm must be 'layer' or None, got {target_norm!r}")
    if kind not in _JEPA_KINDS:
        raise ValueError(f"kind must be one of {tuple(_JEPA_KINDS)}, got {kind!r}")
    if kind == "lp" and not p > 0:
        raise ValueError(f"p must be > 0, got {p}")


def masked_l2_loss_reference(pred: torch.Tensor, target: torch.Tensor, idx: Index = None, *,
                             check_idx: bool | None = None) -> torch.Tensor:
    """Plain PyTorch reference. pred ``[B, M, D]``, target ``[B, N, D]``, idx ``[B, M]`` or ``[M]``."""
    gathered = _check_and_gather(pred, target, idx, check_idx)
    dtype = _compute_dtype(pred)
    p = F.normalize(pred.to(dtype), dim=-1)
    t = F.normalize(gathered.to(dtype), dim=-1)
    return (p - t).pow(2).sum(-1).mean()


def masked_jepa_loss_reference(pred: torch.Tensor, target: torch.Tensor, idx: Index = None, *,
                               target_norm: str | None = "layer", kind: str = "smooth_l1",
                               p: float = 1.0, check_idx: bool | None = None) -> torch.Tensor:
    """Plain PyTorch reference of ``masked_jepa_loss`` (same arguments)."""
    _check_jepa_args(target_norm, kind, p)
    dtype = _compute_dtype(pred)
    t = _check_and_gather(pred, target, idx, check_idx).to(dtype)
    if target_norm == "layer":
        t = F.layer_norm(t, (t.shape[-1],), eps=1e-5)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.to(dtype), t, beta=1.0)
    return (pred.to(dtype) - t).abs().pow(p).mean() / p


@triton.jit
def _masked_loss_fwd_kernel(
    pred_ptr, target_ptr, idx_ptr, grad_ptr, partial_ptr,
    R, M, N, BT, D, denom,
    s_pb, s_pm, s_pd, s_tb, s_tn, s_td, s_ib, s_im,
    KIND: tl.constexpr, LAYER_NORM: tl.constexpr, P: tl.constexpr, HAS_IDX: tl.constexpr,
    NEED_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, HI: tl.constexpr, LO: tl.constexpr, TILES: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Program ``pid`` takes ``TILES`` consecutive tiles of ``BLOCK_R`` rows: their partial loss sum ->
    partial[pid]; d(loss)/d(pred) -> grad (contiguous). ``STAGES`` > 1 lets Triton's software pipeliner
    load the next ``STAGES - 1`` tiles (cp.async, into shared memory) while one is computed. ``HI``, ``LO``:
    a row's column chunks (see ``_tile_loss``)."""
    pid = tl.program_id(0)
    inv_denom = 1.0 / denom  # not denom.to(): Triton passes an int argument equal to 1 as a constexpr (triton#2939)
    first = pid.to(tl.int64) * TILES
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for i in tl.range(0, TILES, num_stages=STAGES):
        acc += _tile_loss(pred_ptr, target_ptr, idx_ptr, grad_ptr, first + i, inv_denom, R, M, N, BT, D,
                          s_pb, s_pm, s_pd, s_tb, s_tn, s_td, s_ib, s_im,
                          KIND, LAYER_NORM, P, HAS_IDX, NEED_GRAD, BLOCK_R, HI, LO)
    loss_scale = inv_denom  # the mean (and below V-JEPA's 1/p) applied here: the host only sums the partials
    if KIND == 2:
        loss_scale = inv_denom / P
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0) * loss_scale)


@triton.jit
def _load_f32(ptr, row_offsets, cols, col_stride, mask):
    """A ``[rows, len(cols)]`` block of rows starting at ``ptr + row_offsets``, in fp32 (0 where masked)."""
    return tl.load(ptr + row_offsets[:, None] + cols[None, :] * col_stride, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _pointwise(x, KIND: tl.constexpr, P: tl.constexpr):
    """Each element's loss and its derivative in ``x = pred - target``: smooth L1 (beta 1, ``KIND`` 1) or
    ``|x|^P`` (``KIND`` 2; the 1/P is applied to the sum)."""
    ax = tl.abs(x)
    sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
    if KIND == 1:
        elem = tl.where(ax < 1.0, 0.5 * x * x, ax - 0.5)
        grad = tl.where(ax < 1.0, x, sign)
    elif P == 1.0:  # d/dx |x|^p / p = |x|^(p-1) sign(x)
        elem = ax
        grad = sign
    elif P == 2.0:
        elem = x * x
        grad = x
    else:
        log_ax = tl.log2(tl.where(ax > 0, ax, 1.0))
        elem = tl.where(ax > 0, tl.exp2(P * log_ax), 0.0)
        grad = tl.where(ax > 0, tl.exp2((P - 1.0) * log_ax), 0.0) * sign
    return elem, grad


@triton.jit
def _tile_loss(
    pred_ptr, target_ptr, idx_ptr, grad_ptr, tile, inv_denom,
    R, M, N, BT, D,
    s_pb, s_pm, s_pd, s_tb, s_tn, s_td, s_ib, s_im,
    KIND: tl.constexpr, LAYER_NORM: tl.constexpr, P: tl.constexpr, HAS_IDX: tl.constexpr,
    NEED_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, HI: tl.constexpr, LO: tl.constexpr,
):
    """Rows ``[tile*BLOCK_R, +BLOCK_R)``: their losses ``[BLOCK_R]`` (0 past ``R``, before the mean's
    scaling); writes their gradient (already divided by the mean's denominator). A row is held as columns
    ``[0, HI)`` and, when ``LO`` > 0, ``[HI, HI + LO)``: two power-of-two chunks (768 = 512 + 256) where one
    would pad (to 1,024), so fewer registers per row. Every row sum adds the two chunks."""
    rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)  # tile: int64
    row_ok = rows < R
    b = rows // M
    m = rows % M
    bt = b % BT  # the target sample of this prediction row
    if HAS_IDX:
        n = tl.load(idx_ptr + b * s_ib + m * s_im, mask=row_ok, other=0).to(tl.int64)
        t_row_ok = row_ok & (n >= 0) & (n < N)  # checked on the host already: never read out of bounds
    else:
        n = m
        t_row_ok = row_ok
    p_rows, t_rows = b * s_pb + m * s_pm, bt * s_tb + n * s_tn
    cols = tl.arange(0, HI)
    p_mask = row_ok[:, None] & (cols < D)[None, :]
    t_mask = t_row_ok[:, None] & (cols < D)[None, :]
    p = _load_f32(pred_ptr, p_rows, cols, s_pd, p_mask)
    t = _load_f32(target_ptr, t_rows, cols, s_td, t_mask)
    if LO > 0:  # the second chunk: names ending in 2
        cols2 = HI + tl.arange(0, LO)
        p_mask2 = row_ok[:, None] & (cols2 < D)[None, :]
        t_mask2 = t_row_ok[:, None] & (cols2 < D)[None, :]
        p2 = _load_f32(pred_ptr, p_rows, cols2, s_pd, p_mask2)
        t2 = _load_f32(target_ptr, t_rows, cols2, s_td, t_mask2)
    if KIND == 0:  # || p/max(|p|, eps) - t/max(|t|, eps) ||^2, eps = 1e-12 as F.normalize
        p_sq, t_sq = tl.sum(p * p, axis=1), tl.sum(t * t, axis=1)
        if LO > 0:
            p_sq += tl.sum(p2 * p2, axis=1)
            t_sq += tl.sum(t2 * t2, axis=1)
        p_norm = tl.sqrt_rn(p_sq)
        inv_p = tl.div_rn(1.0, tl.maximum(p_norm, 1e-12))
        inv_t = tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(t_sq), 1e-12))
        u = p * inv_p[:, None]
        diff = u - t * inv_t[:, None]
        row_loss, radial = tl.sum(diff * diff, axis=1), tl.sum(2.0 * diff * u, axis=1)
        if LO > 0:
            u2 = p2 * inv_p[:, None]
            diff2 = u2 - t2 * inv_t[:, None]
            row_loss += tl.sum(diff2 * diff2, axis=1)
            radial += tl.sum(2.0 * diff2 * u2, axis=1)
        # g = 2(u - v); dL/dp = g/max(|p|,eps) - (g.u) u/|p| (the radial term only where the clamp is off)
        radial = tl.where(p_norm > 1e-12, radial * inv_p, 0.0)
        grad = 2.0 * diff * inv_p[:, None] - u * radial[:, None]
        if LO > 0:
            grad2 = 2.0 * diff2 * inv_p[:, None] - u2 * radial[:, None]
    else:
        if LAYER_NORM:  # F.layer_norm over D without affine, eps 1e-5
            t_sum = tl.sum(t, axis=1)
            if LO > 0:
                t_sum += tl.sum(t2, axis=1)
            mean = t_sum / D
            t = tl.where(t_mask, t - mean[:, None], 0.0)
            t_sq = tl.sum(t * t, axis=1)
            if LO > 0:
                t2 = tl.where(t_mask2, t2 - mean[:, None], 0.0)
                t_sq += tl.sum(t2 * t2, axis=1)
            rstd = tl.rsqrt(t_sq / D + 1e-5)
            t = t * rstd[:, None]
            if LO > 0:
                t2 = t2 * rstd[:, None]
        elem, grad = _pointwise(p - t, KIND, P)
        row_loss = tl.sum(tl.where(p_mask, elem, 0.0), axis=1)
        if LO > 0:
            elem2, grad2 = _pointwise(p2 - t2, KIND, P)
            row_loss += tl.sum(tl.where(p_mask2, elem2, 0.0), axis=1)
    if NEED_GRAD:
        g_rows = rows[:, None] * D
        tl.store(grad_ptr + g_rows + cols[None, :], (grad * inv_denom).to(grad_ptr.dtype.element_ty), mask=p_mask)
        if LO > 0:
            tl.store(grad_ptr + g_rows + cols2[None, :], (grad2 * inv_denom).to(grad_ptr.dtype.element_ty),
                     mask=p_mask2)
    return tl.where(row_ok, row_loss, 0.0)


@triton.jit
def _scale_kernel(x_ptr, scale_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """``out = x * scale[0]`` over ``n`` contiguous elements (fp32 product, stored in out's dtype)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < n
    scale = tl.load(scale_ptr).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=in_range, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (x * scale).to(out_ptr.dtype.element_ty), mask=in_range)


@dataclass(frozen=True)
class MaskedLossLaunch:
    """How the loss kernels launch (``masked_loss_launch`` computes it from the shape)."""

    block_r: int  # rows per tile (a power of two)
    hi: int  # a row's first chunk: D rounded up to a power of two, or the largest power of two below D
    lo: int  # its second chunk (0: none): D - hi rounded up to a power of two
    num_warps: int
    tiles: int = 1  # consecutive tiles per program
    stages: int = 1  # software pipelining depth (1: none)
    triton_scale: bool = True  # the eager backward's product in ``_scale_kernel`` (False: torch's product)
    scale_block: int = 4096  # that kernel's elements per program (a power of two)
    scale_warps: int = 8


def _row_chunks(D: int, split_rows: bool) -> tuple[int, int]:
    """(hi, lo): a row as one power-of-two chunk, padded; with ``split_rows``, as two where that pads less
    (768: 512 + 256 instead of 1,024; 1,000 stays 1,024)."""
    whole = next_power_of_2(D)
    if split_rows and whole > D:
        hi = whole // 2
        lo = next_power_of_2(D - hi)
        if hi + lo < whole:
            return hi, lo
    return whole, 0


# CUDA launch defaults (``masked_loss_launch``'s keyword arguments; ``benchmarks.sweep_launch`` times others):
# - elements per tile (rows of D rounded up to a power of two) and warps (None: one warp per 1024 elements,
#   2 to 16). On an H200 (bf16 forward, 150k rows): at D 768 fewer warps per tile are faster (2048 elements:
#   0.225 / 0.271 / 0.328 ms with 2 / 4 / 8 warps); at D 96 the settings lie within noise.
# - software pipelining: a program takes ``tiles`` consecutive tiles and Triton's pipeliner keeps
#   ``stages - 1`` of them loading while it computes one (1, 1: one tile per program, no pipelining).
#   Candidates in the sweep; on the CPU, compiled for sm_90, loads become cp.async into shared memory.
# - ``split_rows``: a row held as two power-of-two chunks where one would pad (the recipe's widths are 3 x 2^k:
#   768 = 512 + 256, not 1,024): fewer registers per row. Any device (the tests run it under the
#   interpreter); a sweep candidate.
# - backward: the forward's gradient times ``grad_output`` (a 0-dim device tensor) in a Triton kernel
#   (``triton_scale``: one vectorised read and write) instead of torch's ``grad * grad_output``, whose fp32
#   0-dim CUDA operand beside a bf16 tensor sends it, by our reading of PyTorch's CUDA elementwise loop, down
#   the unvectorised, dynamically casting path (not measured: a sweep row times both). CUDA block, warps: the
#   EMA kernel's (the same streaming shape; 104% of copy on an H200).
@functools.lru_cache(maxsize=1024)
def masked_loss_launch(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str, *,
                       tile_elements: int = 2048, warps: int | None = None, tiles: int = 1, stages: int = 1,
                       split_rows: bool = False, triton_scale: bool = True, scale_block: int = 4096,
                       scale_warps: int = 8) -> MaskedLossLaunch:
    """The launch for a prediction of ``shape`` ``[..., D]`` (rows: the product of the leading sizes) on
    ``device`` (a pure function, cached; ``dtype`` does not enter the rules: tiles are fp32 in registers).

    CUDA: ``tile_elements`` per tile (rows of D rounded up to a power of two, at most 64 rows), ``warps``
    (None: one per 1,024 elements of a tile, 2 to 16), ``tiles`` per program, ``stages`` of pipelining; a row
    longer than a tile gets a program of its own, a warp per 1,024 elements and no pipelining (the tuned
    settings would spill registers or overflow shared memory there). The backward's product: ``scale_block``
    elements and ``scale_warps`` a program. Interpreter (any other device): many rows per program, one tile
    each, 2^16 elements a program (each program instance costs ~3 ms there); the keywords above are CUDA's.
    ``split_rows`` and ``triton_scale`` apply on every device."""
    *rows, D = shape
    R = math.prod(rows)
    block_d = next_power_of_2(D)
    hi, lo = _row_chunks(D, split_rows)
    scale = dict(triton_scale=triton_scale, scale_block=scale_block, scale_warps=scale_warps)
    if torch.device(device).type != "cuda":
        block_r = max(1, min(next_power_of_2(max(R, 1)), 2**16 // block_d))
        return MaskedLossLaunch(block_r, hi, lo, 4, **scale | dict(scale_block=2**16, scale_warps=4))
    if block_d > tile_elements:
        return MaskedLossLaunch(1, hi, lo, min(16, block_d // 1024), **scale)
    block_r = min(64, tile_elements // block_d)
    warps = warps or min(16, max(2, block_r * block_d // 1024))
    return MaskedLossLaunch(block_r, hi, lo, warps, tiles, stages, **scale)


def _resolve(launch: MaskedLossLaunch | Sequence[int] | None, pred: torch.Tensor) -> MaskedLossLaunch:
    """``launch`` as given (a ``MaskedLossLaunch`` or the custom op's list of its fields), else computed."""
    if launch is None:
        return masked_loss_launch(pred.shape, pred.dtype, pred.device)
    if not isinstance(launch, MaskedLossLaunch):
        launch = MaskedLossLaunch(*launch)
    if launch.hi + launch.lo < pred.shape[-1]:
        raise ValueError(f"launch {launch} covers {launch.hi + launch.lo} columns of a row of {pred.shape[-1]}")
    return launch


def _scaled_gradient(grad: torch.Tensor, grad_loss: torch.Tensor, launch: MaskedLossLaunch | None = None
                     ) -> torch.Tensor:
    """``grad * grad_loss`` (``grad`` contiguous, ``grad_loss`` the loss's 0-dim gradient on its device): the
    eager backward. Torch's product where a graph of the backward is wanted (``create_graph``) or
    ``launch.triton_scale`` is off."""
    if launch is None:
        launch = masked_loss_launch(grad.shape, grad.dtype, grad.device)
    if not launch.triton_scale or (torch.is_grad_enabled() and grad_loss.requires_grad):
        return grad * grad_loss
    out = _host.empty(grad.shape, grad.dtype, grad.device)
    n = grad.numel()
    if n:
        block = launch.scale_block
        _scale_kernel[(cdiv(n, block),)](grad, grad_loss, out, n, BLOCK=block, num_warps=launch.scale_warps)
    return out


def _masked_latent_loss(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor | None, kind: int,
                        layer_norm: bool, p: float, need_grad: bool, launch: list[int] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path: (scalar fp32 loss, d(loss)/d(pred) as contiguous ``[B, M, D]`` in pred's dtype, or
    an empty tensor when ``need_grad`` is False). Inputs are validated by the caller. ``launch``: a
    ``MaskedLossLaunch``, the custom op's list of its fields, or None (computed)."""
    B, M, D = pred.shape
    R = B * M
    grad = _host.empty(pred.shape if need_grad else (0,), pred.dtype, pred.device)
    if not R:  # the mean over no tokens is NaN, as in the reference
        return torch.full((), float("nan"), dtype=torch.float32, device=pred.device), grad
    launch = _resolve(launch, pred)
    programs = cdiv(cdiv(R, launch.block_r), launch.tiles)
    partial = _host.empty((programs,), torch.float32, pred.device)
    idx_arg = idx if idx is not None else target
    s_ib, s_im = idx.stride() if idx is not None else (0, 0)
    _masked_loss_fwd_kernel[(programs,)](
        pred, target, idx_arg, grad, partial, R, M, target.shape[1], target.shape[0], D,
        R if kind == _L2 else R * D, *pred.stride(), *target.stride(), s_ib, s_im, KIND=kind, LAYER_NORM=layer_norm,
        P=float(p), HAS_IDX=idx is not None, NEED_GRAD=need_grad, BLOCK_R=launch.block_r, HI=launch.hi,
        LO=launch.lo, TILES=launch.tiles, STAGES=launch.stages, num_warps=launch.num_warps)
    return partial.sum(), grad  # the partials are already divided by the mean's denominator (and by p)


# Two doors to the same launch. Under torch.compile: a custom op (traceable). Eagerly: an autograd.Function,
# which skips the dispatcher: with the launch stubbed out, a forward + backward costs the host about half
# the time through the custom op (``benchmarks/bench_host_overhead.py``), time the GPU waits for at small and
# medium sizes.
_masked_latent_loss_op = torch.library.custom_op("hjepa_fast::masked_latent_loss", mutates_args=())(
    _masked_latent_loss)


@_masked_latent_loss_op.register_fake
def _(pred, target, idx, kind, layer_norm, p, need_grad, launch=None):
    grad_shape = pred.shape if need_grad else (0,)
    return pred.new_empty((), dtype=torch.float32), pred.new_empty(grad_shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled [B, M, D] for the gradient output nobody differentiates
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss: torch.Tensor, _grad_of_grad: torch.Tensor | None):
    """The custom op's backward, traced by torch.compile: Inductor fuses the product into one kernel."""
    (grad,) = ctx.saved_tensors
    return grad * grad_loss, None, None, None, None, None, None, None


_masked_latent_loss_op.register_autograd(_backward, setup_context=_setup_context)


class _MaskedLatentLoss(torch.autograd.Function):
    """The eager door (see above): forward launches the kernel and keeps its gradient; backward scales it."""

    @staticmethod
    def forward(ctx, pred, target, idx, kind: int, layer_norm: bool, p: float,
                launch: MaskedLossLaunch | None) -> torch.Tensor:
        ctx.launch = launch = _resolve(launch, pred)
        loss, grad = _masked_latent_loss(pred, target, idx, kind, layer_norm, p, ctx.needs_input_grad[0], launch)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return _scaled_gradient(grad, grad_loss, ctx.launch), None, None, None, None, None, None


def _fused(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor | None, kind: int, layer_norm: bool,
           p: float, launch: MaskedLossLaunch | None) -> torch.Tensor:
    if torch.compiler.is_compiling():
        need_grad = pred.requires_grad and torch.is_grad_enabled()
        fields = None if launch is None else [int(x) for x in astuple(launch)[:6]]  # the forward's (the schema's)
        return _masked_latent_loss_op(pred, target.detach(), idx, kind, layer_norm, float(p), need_grad, fields)[0]
    return _MaskedLatentLoss.apply(pred, target.detach(), idx, kind, layer_norm, float(p), launch)


def _check_triton(pred: torch.Tensor) -> None:
    if pred.shape[-1] > MAX_D:
        raise ValueError(f"the Triton kernel supports D <= {MAX_D}, got {pred.shape[-1]}")


def masked_l2_loss_triton(pred: torch.Tensor, target: torch.Tensor, idx: Index = None, *,
                          check_idx: bool | None = None, launch: MaskedLossLaunch | None = None) -> torch.Tensor:
    """``masked_l2_loss`` always through the Triton kernel (CPU tensors need ``TRITON_INTERPRET=1``).
    ``launch``: the kernel's launch settings (None: ``masked_loss_launch`` of pred's shape, dtype, device)."""
    idx = _check(pred, target, idx, check_idx)
    _check_triton(pred)
    return _fused(pred, target, idx, _L2, False, 1.0, launch)


def masked_jepa_loss_triton(pred: torch.Tensor, target: torch.Tensor, idx: Index = None, *,
                            target_norm: str | None = "layer", kind: str = "smooth_l1",
                            p: float = 1.0, check_idx: bool | None = None,
                            launch: MaskedLossLaunch | None = None) -> torch.Tensor:
    """``masked_jepa_loss`` always through the Triton kernel (CPU tensors need ``TRITON_INTERPRET=1``);
    ``launch`` as ``masked_l2_loss_triton``."""
    _check_jepa_args(target_norm, kind, p)
    idx = _check(pred, target, idx, check_idx)
    _check_triton(pred)
    return _fused(pred, target, idx, _JEPA_KINDS[kind], target_norm == "layer", p, launch)


def _nested_mean(fn: Callable[..., torch.Tensor], pred, target, idx, **kw) -> torch.Tensor:
    """The peers' nested layouts, each (prediction, mask) pair weighted equally, as V-JEPA averages them:
    pred a list of ``[B, K_j, D]`` with target one tensor and idx a list (V-JEPA), or pred a list of
    groups (lists) with target a list of ``[B_g, N, D]`` and idx a list of groups (V-JEPA 2: one group per
    frames-per-clip setting)."""
    def fail(what: str) -> ValueError:
        return ValueError(
            f"pred is a list, so idx must mirror it: {what}. Layouts: pred [B, M, D] with idx a tensor or a "
            "list of [B_i, M] (I-JEPA); pred list of [B, K_j, D], target [B, N, D], idx list of [B, K_j] "
            "(V-JEPA); pred list of groups, target list of [B_g, N, D], idx list of groups (V-JEPA 2)")
    if not isinstance(idx, (list, tuple)) or len(idx) != len(pred) or not pred:
        raise fail(f"got {len(pred)} predictions and idx of type {type(idx).__name__}")
    if all(isinstance(z, torch.Tensor) for z in pred):
        if not isinstance(target, torch.Tensor):
            raise fail("with a flat list of predictions (V-JEPA), target is one [B, N, D] tensor")
        return torch.stack([fn(z, target, m, **kw) for z, m in zip(pred, idx)]).mean()
    if not isinstance(target, (list, tuple)) or len(target) != len(pred):
        raise fail("with groups of predictions (V-JEPA 2), target is a list of one [B_g, N, D] per group")
    losses = []
    for group, (zs, h, ms) in enumerate(zip(pred, target, idx)):
        if not isinstance(zs, (list, tuple)) or not isinstance(ms, (list, tuple)) or len(zs) != len(ms):
            raise fail(f"group {group} needs a list of predictions and a list of masks of one length")
        losses += [fn(z, h, m, **kw) for z, m in zip(zs, ms)]
    return torch.stack(losses).mean()


def masked_l2_loss(pred, target, idx: Index = None, *, check_idx: bool | None = None,
                   launch: MaskedLossLaunch | None = None) -> torch.Tensor:
    """Masked-token L2-normalised loss (scalar, float32; float64 for float64 inputs, on the reference path).
    pred ``[B, M, D]``; target ``[B_t, N, D]`` gathered at idx ``[B, M]`` or ``[M]`` (None: target is
    ``[B_t, M, D]``), where ``B_t`` is ``B`` or divides it (pred row ``b`` reads target sample ``b % B_t``).
    Triton on CUDA, the reference elsewhere. idx may also be I-JEPA's list of masks, and pred/target/idx
    V-JEPA's or V-JEPA 2's nested lists (``_nested_mean``).

    check_idx: None (default) checks the index range without a host sync (a device-side assert on CUDA);
    True checks with one host sync and a ValueError; False skips it for indices the caller made. The
    kernel never reads out of bounds (an out-of-range row reads as zeros). launch: the Triton kernel's
    launch settings (``masked_loss_launch``; None: computed), unused on the reference path."""
    if isinstance(pred, (list, tuple)):
        return _nested_mean(masked_l2_loss, pred, target, idx, check_idx=check_idx, launch=launch)
    if use_triton(pred) and pred.shape[-1] <= MAX_D and pred.dtype != torch.float64:
        return masked_l2_loss_triton(pred, target, idx, check_idx=check_idx, launch=launch)
    return masked_l2_loss_reference(pred, target, idx, check_idx=check_idx)


def masked_jepa_loss(pred, target, idx: Index = None, *, target_norm: str | None = "layer",
                     kind: str = "smooth_l1", p: float = 1.0, check_idx: bool | None = None,
                     launch: MaskedLossLaunch | None = None) -> torch.Tensor:
    """The I-JEPA (``kind="smooth_l1"``, beta 1) and V-JEPA (``kind="lp"``: ``mean(|pred - target|^p) / p``)
    losses on gathered, layer-normalised targets (scalar, float32; mean over all B*M*D elements). Layouts,
    dtypes, ``check_idx`` and ``launch`` as ``masked_l2_loss``; ``target_norm=None`` skips the layer norm."""
    args = dict(target_norm=target_norm, kind=kind, p=p, check_idx=check_idx)
    if isinstance(pred, (list, tuple)):
        return _nested_mean(masked_jepa_loss, pred, target, idx, **args, launch=launch)
    if use_triton(pred) and pred.shape[-1] <= MAX_D and pred.dtype != torch.float64:
        return masked_jepa_loss_triton(pred, target, idx, **args, launch=launch)
    return masked_jepa_loss_reference(pred, target, idx, **args)
