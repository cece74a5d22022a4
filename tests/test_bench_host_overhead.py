"""benchmarks.bench_host_overhead times what it says: on CPU every door of both ops reaches the kernel launches once
per forward and backward, so the host time it reports is the path to a real launch."""
from __future__ import annotations

import torch
from cuda_compile import recording

from benchmarks import bench_host_overhead as bench
from hjepa_fast.kernels import masked_loss as ml
from hjepa_fast.kernels import temporal_pool as tp


def _names(launches) -> list[str]:
    return [launch.kernel.fn.__name__ for launch in launches]


def test_every_door_reaches_the_kernels_once_per_pass():
    with recording(ml, ["_masked_loss_fwd_kernel", "_scale_kernel"]) as loss_launches, \
            recording(tp, ["_pool_fwd_kernel", "_pool_bwd_kernel"]) as pool_launches:
        doors = bench.doors(torch.device("cpu"))
        assert list(doors) == ["autograd floor", "masked_l2_loss", "temporal_attention_pool"]
        for door, fn in doors["masked_l2_loss"].items():
            loss_launches.clear()
            grads = fn()
            # the custom op's backward is torch's product (Inductor fuses it), the eager door's a Triton kernel
            scale = [] if door == "custom op" else ["_scale_kernel"]
            assert _names(loss_launches) == ["_masked_loss_fwd_kernel", *scale], door
            assert grads[0].shape == (2, 3, 8)
        for door, fn in doors["temporal_attention_pool"].items():
            pool_launches.clear()
            dq, dk, dv = fn()
            assert _names(pool_launches) == ["_pool_fwd_kernel", "_pool_bwd_kernel"], door
            assert dq.shape == (2, 4) and dk.shape == dv.shape == (1, 4, 3, 2, 4)
    assert all(len(grads) == 1 for grads in (fn() for fn in doors["autograd floor"].values()))


def test_calling_thread_door_turns_engine_multithreading_off_for_the_call_only():
    seen = []
    door = bench.on_calling_thread(lambda: seen.append(torch.autograd.is_multithreading_enabled()))
    door()
    assert seen == [False] and torch.autograd.is_multithreading_enabled()


def test_on_cpu_the_launches_are_stubbed_while_the_doors_are_timed():
    cases = bench.setup("masked_l2_loss", torch.device("cpu"))  # stubbed while the runner holds the case
    case = next(cases)
    assert isinstance(ml._masked_loss_fwd_kernel, bench._NoLaunch) and case.fields == {"launches": "stubbed"}
    assert list(case.paths) == ["custom op", "public function", bench.CALLING_THREAD] and not case.compare
    cases.close()
    assert not isinstance(ml._masked_loss_fwd_kernel, bench._NoLaunch)
