"""Launch settings of the three Triton kernels on one large shape each (CUDA only): the bare launch's device time
(from a CUDA graph), GB/s on the bytes the kernel moves and the fraction of copy. A setting is keywords of the op's
launch-settings function (``cases.yaml``); the default comes first, every other output is compared with its, and
the default and the three fastest others are timed again (``round`` 2). Cases: the loss forward (D 768, D 96, D 96
shuffled) and its backward's product, the pooling forward and backward (with and without the mask), the EMA of
~100 M fp32."""
from __future__ import annotations

import functools

import torch

from benchmarks.bench_masked_loss import loss_inputs
from benchmarks.bench_temporal_pool import WINDOW, pool_inputs
from benchmarks.harness import CASES, Case, cli, launch_settings, run_cases, seeded_copies, setting_text
from hjepa_fast.kernels import ema, masked_loss, temporal_pool

LAUNCH = {"masked_loss": masked_loss.masked_loss_launch, "temporal_pool": temporal_pool.temporal_pool_launch,
          "ema": ema.ema_launch}
# case -> (the op's launch-settings function, the settings timed beside its default), in the order they run
SETTINGS = {case: (LAUNCH[case.split()[0]], launch_settings(LAUNCH[case.split()[0]], partial))
            for case, partial in CASES["sweep_launch"]["settings"].items()}
MASKED_LOSS_SETTINGS = SETTINGS["masked_loss fwd D768"][1]
EMA_SIZE = CASES["sweep_launch"]["ema_size"]


def loss_case(case: str, device: torch.device, quick: bool) -> dict:
    """Case keywords of a loss case: its calls under a setting and the bytes they move."""
    B, (M, N, D) = 16 if quick else 128, (1176, 1568, 768) if "D768" in case or "scale" in case else (784, 1568, 96)
    if "scale" in case:
        grad_loss = torch.tensor(0.5, device=device)

        def scaled(grad: torch.Tensor, setting: dict) -> tuple[torch.Tensor]:
            launch = masked_loss.masked_loss_launch(grad.shape, grad.dtype, grad.device, **setting)
            return (masked_loss._scaled_gradient(grad, grad_loss, launch),)
        grads = seeded_copies(lambda g: (torch.randn(B, M, D, device=device, dtype=torch.bfloat16, generator=g),),
                              B * M * D * 2, device, seed=D)
        return {"name": f"{case} {B * M * D / 1e6:.0f}M", "run": scaled, "nbytes": 4 * B * M * D, "inputs": grads}

    def l2(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, setting: dict) -> tuple[torch.Tensor, ...]:
        launch = masked_loss.masked_loss_launch(pred.shape, pred.dtype, pred.device, **setting)
        return masked_loss._masked_latent_loss(pred, target, idx, masked_loss._L2, False, 1.0, True, launch)
    copies = seeded_copies(lambda g: loss_inputs((B, M, N, D), torch.bfloat16, device, g, "out of order" not in case),
                           B * M * (2 * D * 2 + 8), device, seed=D)
    return {"name": case, "run": l2, "nbytes": B * M * (3 * D * 2 + 8), "inputs": copies}


def pool_case(case: str, device: torch.device, quick: bool) -> dict:
    B, T = 4 if quick else 32, 32
    inputs = pool_inputs(B, T, torch.bfloat16, "masked" in case, device, torch.Generator(device=device).manual_seed(1))
    q, k, v, visible, grad = (None if t is None else t.detach() for t in inputs)
    launch = lambda setting: temporal_pool.temporal_pool_launch(k.shape, WINDOW, k.dtype, k.device, **setting)
    nbytes = ((2 if " fwd" in case else 4) * k.numel() + grad.numel()) * 2 + (0 if visible is None else visible.numel())
    if " fwd" in case:
        run = lambda setting: (temporal_pool._forward(q, k, v, WINDOW, visible, launch(setting)),)
    else:
        run = lambda setting: temporal_pool._backward(q, k, v, WINDOW, visible, grad, launch(setting))
    return {"name": f"{case} B{B} T{T}", "run": run, "nbytes": nbytes}


def ema_case(case: str, device: torch.device, quick: bool) -> dict:
    n = EMA_SIZE["quick" if quick else "full"]
    start, source = torch.randn(n, device=device), torch.randn(n, device=device)
    target, starts = start.clone(), torch.tensor([0, n // 2, 3 * n // 4], device=device)
    weights = torch.tensor([0.004, 0.002, 0.001], device=device)

    def run(setting: dict) -> tuple[torch.Tensor]:
        ema.ema_flat_triton_(target, source, starts, weights, launch=ema.ema_launch(n, target.dtype, device, **setting))
        return (target,)
    return {"name": f"ema {n / 1e6:.1f}M fp32", "run": run, "nbytes": 12 * n, "reset": lambda: target.copy_(start)}


def setup(case: str, device: torch.device, quick: bool = False):
    settings_fn, settings = SETTINGS[case]
    default = launch_settings(settings_fn, [{}, *settings])[0]  # the keywords the settings name, at their defaults
    c = {"masked_loss": loss_case, "temporal_pool": pool_case, "ema": ema_case}[case.split()[0]](case, device, quick)
    paths = {setting_text(s, default): functools.partial(c["run"], setting=s) for s in [default, *settings]}
    yield Case(c["name"], paths, {"frac_copy": c["nbytes"]}, reset=c.get("reset", lambda: None),
               inputs=c.get("inputs"))


if __name__ == "__main__":
    run_cases("sweep_launch", cli(__doc__).parse_args(), lambda device, quick: list(SETTINGS), setup, cuda_only=True,
              graph_only=True, again=3)
