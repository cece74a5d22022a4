"""EMA of every target encoder of the ViT-B 3-level recipe (configs/vitb_3level.yaml; its encoders hold
~99.6 M parameters in 340 tensors): per-tensor Python loop, ``torch._foreach_lerp_`` per level, the packed
``MultiLevelEMA`` step (torch slices on CPU, one Triton launch on CUDA) and, on CUDA, ``torch.compile`` of
the loop.

Bytes: the minimum an EMA must move is one read of the target, one read of the source and one write of the
target, 3 * itemsize per parameter (12 B fp32); GB/s = that / time, compared with the copy bandwidth
measured on the same device in the same run. ``--quick`` divides every tensor's first dimension by 10.

    python -m benchmarks.bench_ema [--quick] [--device cuda]
"""
from __future__ import annotations

import torch

from benchmarks.harness import copy_bandwidth, device_info, measure, parse_args, write_results
from hjepa_fast.config import load_config
from hjepa_fast.kernels import kernel_mode
from hjepa_fast.kernels.ema import EMASchedule, MultiLevelEMA, ema_update_reference_
from hjepa_fast.train.builders import build_model

TAUS = [0.996, 0.998, 0.999]


def level_shapes(quick: bool) -> list[list[torch.Size]]:
    """Shapes of each level's target-encoder parameters, built on the meta device (no memory)."""
    with torch.device("meta"):
        targets, _ = build_model(load_config("configs/vitb_3level.yaml")).ema_pairs()
    shrink = (lambda s: torch.Size([max(1, s[0] // 10), *s[1:]]) if len(s) else s) if quick else (lambda s: s)
    return [[shrink(p.shape) for p in group] for group in targets]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device(args.device)
    shapes = level_shapes(args.quick)
    n = sum(s.numel() for g in shapes for s in g)
    make = lambda: [[torch.randn(s, device=device) for s in g] for g in shapes]  # noqa: E731
    targets, sources = make(), make()
    info = {**device_info(device), "params": n, "tensors": sum(map(len, shapes)),
            "copy_gbps": copy_bandwidth(device)}
    label = f"vitb_3level {n / 1e6:.1f}M fp32" + (" (quick)" if args.quick else "")

    def foreach() -> None:
        for tg, sg, tau in zip(targets, sources, TAUS):
            torch._foreach_lerp_(tg, sg, 1.0 - tau)

    rows = []

    def record(path: str, fn) -> None:
        r = measure(fn, device)
        gbps = 3 * 4 * n / (r["ms"] * 1e-3) / 1e9
        rows.append({"path": path, "shape": label, **r, "gbps": gbps, "frac_copy": gbps / info["copy_gbps"]})
        print(f"{path:>24}: {r['ms']:8.3f} ms  {gbps:7.1f} GB/s  {gbps / info['copy_gbps']:5.0%} of copy")
        write_results("ema", info, rows, args.out)  # after each path: a timeout keeps what was measured

    print(f"{label} on {info['name']}: copy {info['copy_gbps']:.1f} GB/s")
    record("python loop", lambda: ema_update_reference_(targets, sources, TAUS))
    record("foreach per level", foreach)
    ema = MultiLevelEMA(targets, sources, EMASchedule(TAUS, TAUS, total_steps=1))  # packs in place
    with kernel_mode("reference"):
        record("packed, torch slices", lambda: ema.step(0))
    if device.type == "cuda":
        record("packed, triton (ours)", lambda: ema.step(0))
        # last: compiling a loop over 340 tensors takes the longest (the tensors are views now: same bytes)
        record("compile(loop)", torch.compile(lambda: ema_update_reference_(targets, sources, TAUS)))
    print(f"wrote {args.out / 'ema.json'} and {args.out / 'ema.png'}")


if __name__ == "__main__":
    main()
