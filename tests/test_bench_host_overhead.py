"""benchmarks.bench_host_overhead times what it says: on CPU every door of both ops reaches the (stubbed)
kernel launches once per forward and backward, so the host time it reports is the path to a real launch."""
from __future__ import annotations

from unittest import mock

import torch

from benchmarks import bench_host_overhead as bench
from hjepa_fast.kernels import masked_loss as ml
from hjepa_fast.kernels import temporal_pool as tp


class _CountingLaunch:
    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
        return launch


def test_every_door_reaches_the_kernels_once_per_pass():
    kernels = {"loss": _CountingLaunch(), "pool_fwd": _CountingLaunch(), "pool_bwd": _CountingLaunch()}
    with mock.patch.object(ml, "_masked_loss_fwd_kernel", kernels["loss"]), \
            mock.patch.object(tp, "_pool_fwd_kernel", kernels["pool_fwd"]), \
            mock.patch.object(tp, "_pool_bwd_kernel", kernels["pool_bwd"]):
        doors = bench.cases(torch.device("cpu"))
        assert set(doors) == {"masked_l2_loss", "temporal_attention_pool"}
        for door, fn in doors["masked_l2_loss"].items():
            before = kernels["loss"].launches
            grads = fn()
            assert kernels["loss"].launches == before + 1, door  # forward kernel; backward is a torch scale
            assert grads[0].shape == (2, 3, 8)
        for door, fn in doors["temporal_attention_pool"].items():
            before = (kernels["pool_fwd"].launches, kernels["pool_bwd"].launches)
            dq, dk, dv = fn()
            assert (kernels["pool_fwd"].launches, kernels["pool_bwd"].launches) == (before[0] + 1, before[1] + 1), door
            assert dq.shape == (2, 4) and dk.shape == dv.shape == (1, 4, 3, 2, 4)


def test_time_doors_interleaves_and_reports_per_call_ms():
    calls = []
    doors = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.time_doors(doors, rounds=3, calls=2, device=torch.device("cpu"))
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # one warm-up call each, then rounds in turn
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t > 0 for ts in times.values() for t in ts)
