"""The Triton ops forward + backward through autograd as the batch grows (CUDA only): the masked L2 loss at ViT-B
width and the pooling at level 1 -> 2 (T 32), bf16, as a caller sees them and from a CUDA graph; their difference
(``gap_ms``) is the per-call cost the device waits for.

    python -m benchmarks.bench_op_batch [--quick] [--out DIR]
"""
from __future__ import annotations

import torch

from benchmarks.bench_masked_loss import OPS, fwd_bwd, input_copies
from benchmarks.bench_temporal_pool import pool_bytes, pool_call, pool_copies
from benchmarks.harness import Case, Cycling, cli, run_cases
from hjepa_fast.kernels.temporal_pool import temporal_attention_pool_triton

LOSS_SHAPE, POOL_FRAMES = (1176, 1568, 768), 32  # (M, N, D) of the loss; T of the pooling
BATCHES = {"masked_l2_loss": [16, 32, 64, 128, 256, 512], "temporal_attention_pool": [8, 16, 32, 64, 128]}
QUICK_BATCHES = {"masked_l2_loss": [4, 16], "temporal_attention_pool": [2, 8]}


def specs(device: torch.device, quick: bool) -> list[tuple[str, int]]:
    return [(op, B) for op, batches in (QUICK_BATCHES if quick else BATCHES).items() for B in batches]


def setup(spec: tuple[str, int], device: torch.device, quick: bool = False):
    (op, B), (M, N, D), bf16 = spec, LOSS_SHAPE, torch.bfloat16
    if op == "masked_l2_loss":
        call, nbytes = Cycling(fwd_bwd(OPS["l2"][1]), input_copies((B, M, N, D, B), bf16, device)), B * M * (10 * D + 8)
    else:
        call = Cycling(pool_call(temporal_attention_pool_triton, "fwd+bwd"), pool_copies(B, POOL_FRAMES, bf16, False,
                                                                                         device))
        nbytes = pool_bytes(B, POOL_FRAMES, 2, False)["fwd+bwd"]
    yield Case(f"{op} B{B}", {"triton": call}, {"frac_copy": nbytes}, {"op": op, "B": B})


if __name__ == "__main__":
    run_cases("op_batch", cli(__doc__).parse_args(), specs, setup, cuda_only=True)
