"""Anti-collapse terms on a level's token embeddings: VICReg-style variance and covariance, and SIGReg.

Why the tokens are centred per position first: a ViT's tokens carry their position, and a term on raw
tokens is satisfied by position codes alone (128 positions make a spread-out set whatever the clip
shows), which is exactly how a predictor that ignores its context gets by. ``content_centre`` removes
the batch mean at each token position, so what the terms see, and push to spread out, is how one clip
differs from another at the same place and time.

Statistics are over the global batch: sums are all-reduced across ranks with a differentiable
all-reduce, so under DDP / FSDP / DeepSpeed each rank's gradient is that of the global-batch term (the
engines then average the ranks' gradients of one shared value). One process: the local batch. Under
gradient accumulation the batch is the micro-batch of every rank; ``max_tokens`` caps rows per rank.
Every rank of an initialised process group must call the term (it all-reduces).

Shapes: ``z [B, K, D]`` embeddings of ``K`` tokens per clip at positions ``idx [B, K]`` into a grid of
``length`` positions (the level's ``T*N``)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (differentiable); ``t`` itself in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)
    return t


def content_centre(z: torch.Tensor, idx: torch.Tensor, length: int) -> torch.Tensor:
    """``z [B, K, D]`` minus the global-batch mean of the tokens at the same position: ``[B*K, D]`` float32.
    A position seen once centres to zero."""
    D = z.shape[-1]
    flat, pos = z.reshape(-1, D).float(), idx.reshape(-1)
    sums = global_sum(flat.new_zeros(length, D).index_add(0, pos, flat))
    counts = global_sum(flat.new_zeros(length).index_add(0, pos, flat.new_ones(pos.numel())))  # no host sync
    return flat - (sums / counts.clamp_min(1.0).unsqueeze(1))[pos]


def _global_count(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` summed over ranks, as a device scalar (a fill, not a host-to-device copy)."""
    return global_sum(x.new_full((), float(x.shape[0])))


def variance_covariance(x: torch.Tensor, target_std: float = 1.0, eps: float = 1e-4
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's terms on zero-mean rows ``x [n, D]`` (global batch): ``(variance, covariance)`` with
    variance = mean_d relu(target_std - sqrt(var_d + eps)) (a hinge: no gradient once a dimension spreads
    enough) and covariance = sum of squared off-diagonal covariances / D (decorrelates the dimensions).
    One ``D x D`` matmul, no loop over dimensions."""
    n = _global_count(x)
    cov = global_sum(x.T @ x) / n  # [D, D]; rows are centred already
    var = torch.diagonal(cov)
    variance = torch.relu(target_std - torch.sqrt(var + eps)).mean()
    off = cov - torch.diag_embed(var)
    return variance, off.pow(2).sum() / x.shape[1]


def random_directions(dim: int, slices: int, seed: int, device: torch.device) -> torch.Tensor:
    """``[dim, slices]`` unit columns drawn from ``seed`` (the global step: every rank draws the same), on
    ``device`` by a generator there (no host-to-device copy per step)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(dim, slices, generator=generator, device=device)
    return a / a.norm(dim=0, keepdim=True)


class _CharacteristicSums(torch.autograd.Function):
    """``sum_n exp(i k h p)`` for ``p [n, M]`` and ``k = 0 .. points-1``, returned as its real and imaginary
    parts ``[M, points]``. Each node is the previous one times ``exp(i h p)`` (one complex multiply per
    element and node, where a direct evaluation costs a cosine and a sine, and its autograd keeps
    ``[n, M, points]`` tensors); the backward recomputes the powers instead of storing them."""

    @staticmethod
    def forward(ctx, proj: torch.Tensor, h: float, points: int):
        ctx.save_for_backward(proj)
        ctx.h, ctx.points = h, points
        step = torch.polar(torch.ones_like(proj), h * proj)
        power, sums = step, [proj.new_full((proj.shape[1],), float(proj.shape[0])).to(step.dtype), step.sum(0)]
        for _ in range(2, points):
            power = power * step
            sums.append(power.sum(0))
        sums = torch.stack(sums, -1)
        return sums.real, sums.imag

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_real: torch.Tensor, grad_imag: torch.Tensor):
        # d/dp [g_re cos(k h p) + g_im sin(k h p)] = k h Re((g_im + i g_re) exp(i k h p))
        (proj,) = ctx.saved_tensors
        weights = torch.complex(grad_imag, grad_real) * torch.arange(ctx.points, device=proj.device)  # [M, P]
        step = torch.polar(torch.ones_like(proj), ctx.h * proj)
        power, acc = step, step * weights[:, 1]
        for k in range(2, ctx.points):
            power = power * step
            acc += power * weights[:, k]
        return ctx.h * acc.real, None, None


def sigreg(x: torch.Tensor, directions: torch.Tensor, t_max: float = 3.0, points: int = 17) -> torch.Tensor:
    """SIGReg (LeJEPA): how far the projections of ``x [n, D]`` on ``directions [D, M]`` are from a
    standard normal, by the Epps-Pulley distance between characteristic functions,
    ``mean_m  int |phi_n(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt`` over ``[-t_max, t_max]`` (trapezoid on
    ``points`` equally spaced nodes of the half line; the integrand is even). Divided by n (LeJEPA's
    statistic is n times this), so that its weight does not depend on the batch size. 0 for an isotropic
    Gaussian with unit variance, large for a collapsed set. Empirical characteristic function over the
    global batch."""
    n = _global_count(x)
    t = torch.linspace(0.0, t_max, points, device=x.device, dtype=x.dtype)
    cos_sums, sin_sums = _CharacteristicSums.apply(x @ directions, t_max / (points - 1), points)
    real = global_sum(cos_sums) / n  # [M, P]
    imag = global_sum(sin_sums) / n
    gauss = torch.exp(-0.5 * t * t)
    integrand = ((real - gauss).pow(2) + imag.pow(2)) * gauss
    return 2.0 * torch.trapezoid(integrand, t, dim=-1).mean()


def subsample_rows(x: torch.Tensor, max_rows: int, seed: int) -> torch.Tensor:
    """At most ``max_rows`` rows of ``x [n, D]``, a random subset drawn from ``seed`` (bounds the cost of
    the terms at batch 2048; the centring already used every token)."""
    if max_rows <= 0 or x.shape[0] <= max_rows:
        return x
    generator = torch.Generator(device=x.device).manual_seed(seed)
    keep = torch.randperm(x.shape[0], generator=generator, device=x.device)[:max_rows]
    return x[keep]


class AntiCollapse(torch.nn.Module):
    """The per-level anti-collapse term: ``variance * v + covariance * c + sigreg * s`` on the
    content-centred embeddings of that level (weights per level; all zero: the level has none).
    ``max_tokens`` caps the rows the terms read per rank; ``slices`` is SIGReg's number of directions."""

    def __init__(self, variance: list[float], covariance: list[float], sigreg: list[float], slices: int = 256,
                 max_tokens: int = 8192, target_std: float = 1.0):
        super().__init__()
        self.weights = list(zip(variance, covariance, sigreg))
        self.slices, self.max_tokens, self.target_std = slices, max_tokens, target_std

    def active(self, level: int) -> bool:
        return any(w > 0 for w in self.weights[level])

    def forward(self, level: int, z: torch.Tensor, idx: torch.Tensor, grid: tuple[int, int, int],
                step: int) -> torch.Tensor:
        """The weighted term of ``level`` for embeddings ``z [B, K, D]`` at ``idx [B, K]`` into its
        ``grid`` (T, H, W) (scalar)."""
        w_var, w_cov, w_sig = self.weights[level]
        seed = step * 1_000 + level  # one draw per (step, level), the same on every rank
        with torch.autocast(z.device.type, enabled=False):  # float32 statistics under bf16 autocast
            x = subsample_rows(content_centre(z, idx, grid[0] * grid[1] * grid[2]), self.max_tokens, seed)
            total = x.new_zeros(())
            if w_var > 0 or w_cov > 0:
                variance, covariance = variance_covariance(x, self.target_std)
                total = total + w_var * variance + w_cov * covariance
            if w_sig > 0:
                total = total + w_sig * sigreg(x, random_directions(x.shape[1], self.slices, seed, x.device))
        return total
