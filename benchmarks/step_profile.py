"""Where a training step's time goes: one warm step under ``torch.profiler``, summed by category (the first match
in ``CATEGORIES``) of each CUDA kernel's device time or, on CPU, each operator's self time; the wall time no kernel
(CUDA) or operator (CPU) accounts for gets a row of its own. The rows add up to the step's wall time."""
from __future__ import annotations

import re
import time
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# (category, pattern over a kernel or operator name, lower case): the first match wins, so the specific
# names (our kernels, attention, convolutions) come before the general ones (gemm, elementwise)
CATEGORIES = [
    ("our kernels: loss", r"_masked_loss|_scale_kernel|masked_l2|masked_jepa"),
    ("our kernels: pooling", r"_pool_(fwd|bwd)|temporal_pool"),
    ("EMA", r"_ema_flat|lerp"),
    ("optimiser", r"adam|multi_tensor_apply|_foreach"),
    ("compiled fusions (inductor)", r"^triton_(poi|per|red)|^cpp_fused|compiledfunction"),
    ("attention", r"flash|fmha|attention|sdpa|scaled_dot|cudnn.*mha|_efficient_attention|softmax"),
    ("convolution", r"conv|fprop|dgrad|wgrad"),
    ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|matmul|\baten::(addmm|mm|bmm|linear)\b"),
    ("norms", r"layer_norm|layernorm"),
    ("data movement", r"memcpy|memset|copy|\bcat\b|catarray|index|gather|scatter|transpose|permute|contiguous"
                      r"|clone|to_copy"),
    ("elementwise and reductions", r"elementwise|vectorized|unrolled|reduce|gelu|add|mul|div|sub|rand|bernoulli"
                                   r"|sum|mean|where|fill|exp|sqrt"),
]
HOST_GAPS = {"cuda": "host gaps (no kernel running)", "cpu": "outside operators (Python, dispatch)"}


def categorize(name: str) -> str:
    """The category of a kernel or operator name ('other' if none matches)."""
    lowered = name.lower()
    return next((cat for cat, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def profile_step(step: Callable[[], None], device: torch.device) -> dict:
    """Profile one call of ``step`` (already warm). Returns ``{"wall_ms", "rows": [{category, ms, share}],
    "top": [(name, ms)]}`` with the rows sorted by time, host gaps included."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    by_name: dict[str, float] = {}
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        for e in kernels:
            by_name[e.name] = by_name.get(e.name, 0.0) + e.time_range.elapsed_us()
        idle = wall_us - _busy_us([(e.time_range.start, e.time_range.end) for e in kernels])
    else:
        for e in prof.key_averages():
            by_name[e.key] = by_name.get(e.key, 0.0) + e.self_cpu_time_total
        idle = wall_us - sum(by_name.values())
    sums: dict[str, float] = {}
    for name, us in by_name.items():
        category = categorize(name)
        sums[category] = sums.get(category, 0.0) + us
    sums[HOST_GAPS["cuda" if cuda else "cpu"]] = max(idle, 0.0)
    rows = [{"category": c, "ms": us / 1e3, "share": us / wall_us} for c, us in sums.items()]
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    return {"wall_ms": wall_us / 1e3, "rows": sorted(rows, key=lambda r: -r["ms"]),
            "top": [(name[:90], us / 1e3) for name, us in top]}


def format_profile(title: str, summary: dict) -> str:
    """A markdown table of the categories, then the 15 costliest kernels or operators."""
    lines = [f"### {title}: one warm step, {summary['wall_ms']:.1f} ms wall", "",
             "| where | ms | share of the step |", "|---|---:|---:|"]
    lines += [f"| {r['category']} | {r['ms']:.2f} | {r['share']:.1%} |" for r in summary["rows"]]
    lines += ["", "| costliest kernels / operators | ms |", "|---|---:|"]
    lines += [f"| `{name}` | {ms:.2f} |" for name, ms in summary["top"]]
    return "\n".join(lines) + "\n"
