"""Launch settings of the three Triton kernels on one large shape each (CUDA only): the bare launch's device time
(from a CUDA graph), GB/s on the bytes the kernel moves and the fraction of copy. A setting is keywords of the op's
launch-settings function; the default comes first, every other output is compared with its, and the default and
the three fastest others are timed again (``round`` 2). Cases: the loss forward (D 768, D 96, D 96 shuffled) and
its backward's product, the pooling forward and backward (with and without the mask), the EMA of ~100 M fp32.

``python -m benchmarks.sweep_launch [--out DIR] [--quick]``
"""
from __future__ import annotations

import functools

import torch

from benchmarks.bench_masked_loss import loss_inputs, loss_setting
from benchmarks.bench_temporal_pool import WINDOW, pool_inputs
from benchmarks.harness import Case, Cycling, cli, cold_copies, default_setting, run_cases, setting_text
from hjepa_fast.kernels import ema, masked_loss, temporal_pool

# the loss forward: one tile a program (fewer warps per tile, one-row tiles), software-pipelined programs (4-8
# tiles each, 2-4 stages: the next tiles load into shared memory while one is computed) and split rows (768 =
# 512 + 256 columns, no padding: fewer registers, more programs an SM)
MASKED_LOSS_SETTINGS = [loss_setting(*s) for s in [  # (tile elements, warps, tiles, stages, split rows)
    (2048, 1), (2048, 2), (2048, 4), (4096, 2), (4096, 4), (1024, 1), (1024, 2), (1024, 4),
    (1024, 1, 4, 2), (1024, 2, 8, 3), (1024, 2, 8, 4), (1024, 4, 8, 3), (1024, 4, 8, 4), (2048, 2, 8, 3),
    (2048, 2, 1, 1, True), (2048, 1, 1, 1, True), (1024, 1, 1, 1, True), (4096, 4, 1, 1, True), (1024, 1, 4, 2, True)]]
# the gather in random order at D 96 (192-byte target rows): large one-tile settings
OUT_OF_ORDER_SETTINGS = [loss_setting(e, w) for e, w in [(4096, 4), (2048, 8)]]
# the loss backward's product: the Triton kernel around the EMA kernel's settings, and torch's (triton_scale False)
SCALE_SETTINGS = [{"triton_scale": triton, "scale_block": b, "scale_warps": w}
                  for triton, b, w in [(True, 4096, 8), (True, 2048, 4), (True, 8192, 8), (False, 4096, 8)]]


EMA_SIZE = {"quick": 10_000_000, "full": 99_600_000}  # parameters: the recipe's ~99.6 M


def _pool(launches: list[tuple[int, int]]) -> list[dict]:
    return [{"tile_elements": (t, t), "warps": (w, w)} for t, w in launches]


# case -> (the op's launch-settings function, the settings timed beside its default); in the order they run, the
# EMA (at copy bandwidth) last, where a time limit cuts first
SETTINGS = {
    "masked_loss fwd D768": (masked_loss.masked_loss_launch, MASKED_LOSS_SETTINGS),
    "masked_loss bwd scale": (masked_loss.masked_loss_launch, SCALE_SETTINGS),
    "masked_loss fwd D96": (masked_loss.masked_loss_launch, MASKED_LOSS_SETTINGS),
    "masked_loss fwd D96 idx out of order": (masked_loss.masked_loss_launch, OUT_OF_ORDER_SETTINGS),
    **{f"temporal_pool {d}{m}": (temporal_pool.temporal_pool_launch, _pool(launches)) for m in ("", " masked")
       for d, launches in [("fwd", [(4096, 4), (8192, 4), (8192, 8)]), ("bwd", [(4096, 4), (8192, 4), (8192, 8),
                                                                                  (16384, 4)])]},
    "ema": (ema.ema_launch, [{"block": b, "warps": w} for b, w in [(1024, 4), (2048, 4), (4096, 8)]]),
}


def loss_run(case: str, device: torch.device, quick: bool):
    """(launch under a setting, bytes, label, reset) of a loss case."""
    B, (M, N, D) = 16 if quick else 128, (1176, 1568, 768) if "D768" in case or "scale" in case else (784, 1568, 96)
    g = torch.Generator(device=device).manual_seed(D)
    if "scale" in case:
        grads = [(torch.randn(B, M, D, device=device, dtype=torch.bfloat16, generator=g),)
                 for _ in range(cold_copies(B * M * D * 2, device))]
        grad_loss = torch.tensor(0.5, device=device)

        def scaled(grad: torch.Tensor, setting: dict) -> tuple[torch.Tensor]:
            launch = masked_loss.masked_loss_launch(grad.shape, grad.dtype, grad.device, **setting)
            return (masked_loss._scaled_gradient(grad, grad_loss, launch),)
        run = Cycling(scaled, grads)
        return run, 4 * B * M * D, f"{case} {B * M * D / 1e6:.0f}M", run.restart

    def l2(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, setting: dict) -> tuple[torch.Tensor, ...]:
        launch = masked_loss.masked_loss_launch(pred.shape, pred.dtype, pred.device, **setting)
        return masked_loss._masked_latent_loss(pred, target, idx, masked_loss._L2, False, 1.0, True, launch)
    copies = [loss_inputs((B, M, N, D, B), torch.bfloat16, device, g, "out of order" not in case)
              for _ in range(cold_copies(B * M * (2 * D * 2 + 8), device))]
    run = Cycling(l2, copies)
    return run, B * M * (3 * D * 2 + 8), case, run.restart


def pool_run(case: str, device: torch.device, quick: bool):
    B, T = 4 if quick else 32, 32
    inputs = pool_inputs(B, T, torch.bfloat16, "masked" in case, device, torch.Generator(device=device).manual_seed(1))
    q, k, v, visible, grad = (None if t is None else t.detach() for t in inputs)
    launch = lambda setting: temporal_pool.temporal_pool_launch(k.shape, WINDOW, k.dtype, k.device, **setting)
    vis_bytes = 0 if visible is None else visible.numel()
    if " fwd" in case:
        run = lambda setting: (temporal_pool._forward(q, k, v, WINDOW, visible, launch(setting)),)
        return run, (2 * k.numel() + grad.numel()) * 2 + vis_bytes, f"{case} B{B} T{T}", lambda: None
    run = lambda setting: temporal_pool._backward(q, k, v, WINDOW, visible, grad, launch(setting))
    return run, (4 * k.numel() + grad.numel()) * 2 + vis_bytes, f"{case} B{B} T{T}", lambda: None


def ema_run(case: str, device: torch.device, quick: bool):
    n = EMA_SIZE["quick" if quick else "full"]
    start, source = torch.randn(n, device=device), torch.randn(n, device=device)
    target, starts = start.clone(), torch.tensor([0, n // 2, 3 * n // 4], device=device)
    weights = torch.tensor([0.004, 0.002, 0.001], device=device)

    def run(setting: dict) -> tuple[torch.Tensor]:
        ema.ema_flat_triton_(target, source, starts, weights, launch=ema.ema_launch(n, target.dtype, device, **setting))
        return (target,)
    return run, 12 * n, f"ema {n / 1e6:.1f}M fp32", lambda: target.copy_(start)


def setup(case: str, device: torch.device, quick: bool = False):
    settings_fn, settings = SETTINGS[case]
    default = default_setting(settings_fn, settings[0])
    run, nbytes, label, reset = {"masked_loss": loss_run, "temporal_pool": pool_run, "ema": ema_run}[
        case.split()[0]](case, device, quick)
    paths = {setting_text(s, default): functools.partial(run, s) for s in [default, *settings]}  # the default first
    yield Case(label, paths, {"frac_copy": nbytes}, reset=reset)


if __name__ == "__main__":
    run_cases("sweep_launch", cli(__doc__).parse_args(), lambda device, quick: list(SETTINGS), setup, cuda_only=True,
              graph_only=True, again=3)
