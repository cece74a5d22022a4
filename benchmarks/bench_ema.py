"""EMA of every target encoder of the ViT-B 3-level recipe (~99.6 M parameters in 340 tensors): a Python loop,
``torch._foreach_lerp_`` per level, the packed ``MultiLevelEMA`` step (torch slices; on CUDA one Triton launch) and,
on CUDA, ``torch.compile`` of the loop. Bytes: 12 per fp32 parameter. ``--quick``: first dimensions / 10."""
from __future__ import annotations

import torch

from benchmarks.harness import Case, cli, run_cases
from hjepa_fast.config import load_config
from hjepa_fast.kernels import kernel_mode
from hjepa_fast.kernels.ema import EMASchedule, MultiLevelEMA, ema_update_reference_
from hjepa_fast.train.builders import build_model

TAUS = [0.996, 0.998, 0.999]


def level_shapes(divisor: int = 1) -> list[list[torch.Size]]:
    """Each level's target-encoder parameter shapes (built on the meta device), first dimensions // ``divisor``."""
    with torch.device("meta"):
        targets, _ = build_model(load_config("configs/vitb_3level.yaml")).ema_pairs()
    return [[torch.Size([max(1, p.shape[0] // divisor), *p.shape[1:]]) if p.dim() else p.shape for p in group]
            for group in targets]


def setup(divisor: int, device: torch.device, quick: bool = False):
    shapes = level_shapes(divisor)
    n = sum(s.numel() for group in shapes for s in group)
    targets, sources = ([[torch.randn(s, device=device) for s in group] for group in shapes] for _ in range(2))
    ema = MultiLevelEMA(targets, sources, EMASchedule(TAUS, TAUS, total_steps=1))  # packs the targets in place

    def foreach() -> None:
        for tg, sg, tau in zip(targets, sources, TAUS):
            torch._foreach_lerp_(tg, sg, 1.0 - tau)

    def packed_reference() -> None:
        with kernel_mode("reference"):
            ema.step(0)

    paths = {"python loop": lambda: ema_update_reference_(targets, sources, TAUS), "foreach per level": foreach,
             "packed, torch slices": packed_reference}
    if device.type == "cuda":  # compiling a loop over 340 tensors takes the longest: last
        paths |= {"packed, triton (ours)": lambda: ema.step(0),
                  "compile(loop)": torch.compile(lambda: ema_update_reference_(targets, sources, TAUS))}
    label = f"vitb_3level {n / 1e6:.1f}M fp32" + ("" if divisor == 1 else f" (1/{divisor})")
    yield Case(label, paths, {"frac_copy": 12 * n}, {"params": n, "tensors": sum(map(len, shapes))}, copy_bytes=4 * n)


if __name__ == "__main__":
    run_cases("ema", cli(__doc__).parse_args(), lambda device, quick: [10 if quick else 1], setup)
