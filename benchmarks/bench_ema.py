"""EMA of every target encoder of the ViT-B 3-level recipe (configs/vitb_3level.yaml; its encoders hold
~99.6 M parameters in 340 tensors): per-tensor Python loop, ``torch._foreach_lerp_`` per level, the packed
``MultiLevelEMA`` step (torch slices on CPU, one Triton launch on CUDA) and, on CUDA, ``torch.compile`` of
the loop.

Bytes: the minimum an EMA must move is one read of the target, one read of the source and one write of the
target, 3 * itemsize per parameter (12 B fp32); GB/s = that / time. On CUDA it is compared with a copy of
as many bytes as one parameter set, measured in the same run: the copy's source and destination then
take the room the EMA's targets and sources take, so both meet the same caches (a 256 MB copy against the
``--quick`` EMA's 80 MB compared DRAM with cache). On a CPU no fraction is given: a copy's writes cost a
read of each line first (write-allocate), which an in-place update does not pay, and caches hundreds of MB
large keep the update's tensors between calls (this machine's L3 is 480 MB; the fraction read 400%).
A fraction above ``MAX_FRACTION`` is refused, never reported: it means the bytes or the reference are
wrong. ``--quick`` divides every tensor's first dimension by 10.

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
# above this fraction of a copy of the same bytes, a measurement is wrong, not fast (an update that reads
# two bytes per byte written may get a little more of the memory than a copy's 1:1: 104% on an H200)
MAX_FRACTION = 1.1


def fraction_of_copy(gbps: float, copy_gbps: float | None) -> float | None:
    """``gbps`` over the copy reference's GB/s, None where there is no reference (CPU). Raises ValueError
    for a fraction above ``MAX_FRACTION``: a measurement that cannot be true is worse than none."""
    if copy_gbps is None:
        return None
    fraction = gbps / copy_gbps
    if fraction > MAX_FRACTION:
        raise ValueError(f"{gbps:.1f} GB/s is {fraction:.0%} of a copy of the same bytes ({copy_gbps:.1f} GB/s), "
                         f"above the {MAX_FRACTION:.0%} an EMA can reach: the byte count or the reference is wrong")
    return fraction


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
    copy_gbps = copy_bandwidth(device, nbytes=4 * n) if device.type == "cuda" else None
    info = {**device_info(device), "params": n, "tensors": sum(map(len, shapes)), "copy_gbps": copy_gbps}
    label = f"vitb_3level {n / 1e6:.1f}M fp32" + (" (quick)" if args.quick else "")

    def foreach() -> None:
        for tg, sg, tau in zip(targets, sources, TAUS):
            torch._foreach_lerp_(tg, sg, 1.0 - tau)

    rows = []

    def record(path: str, fn) -> None:
        r = measure(fn, device)
        gbps = 3 * 4 * n / (r["ms"] * 1e-3) / 1e9
        row = {"path": path, "shape": label, **r, "gbps": gbps}
        try:
            row["frac_copy"] = fraction_of_copy(gbps, copy_gbps)
            of_copy = "" if copy_gbps is None else f"  {row['frac_copy']:5.0%} of copy"
        except ValueError as e:
            row["frac_copy"], row["error"] = None, str(e)
            of_copy = f"  (no fraction of copy: {e})"
        rows.append(row)
        print(f"{path:>24}: {r['ms']:8.3f} ms  {gbps:7.1f} GB/s{of_copy}")
        write_results("ema", info, rows, args.out)  # after each path: a timeout keeps what was measured

    reference = "no copy reference on a CPU" if copy_gbps is None else f"copy {copy_gbps:.1f} GB/s"
    print(f"{label} on {info['name']}: {reference}")
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
