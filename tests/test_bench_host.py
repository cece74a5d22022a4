"""benchmarks.bench_host times what it says: on CPU every door of both ops reaches the kernel launches once per
forward and backward, so the host time it reports is the path to a real launch; each ``--batches`` call is a
forward + backward through the public Triton function that reaches both kernels once, and on CPU it says it needs
CUDA."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from cuda_compile import recording

from benchmarks import bench_host as bench
from benchmarks.harness import run_cases
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


@pytest.mark.parametrize("op,module,kernels,grad_shapes", [
    ("masked_l2_loss", ml, ["_masked_loss_fwd_kernel", "_scale_kernel"], [(1, 1176, 768)]),
    ("temporal_attention_pool", tp, ["_pool_fwd_kernel", "_pool_bwd_kernel"],
     [(12, 64), (1, 32, 196, 12, 64), (1, 32, 196, 12, 64)]),
])
def test_each_batch_call_is_one_forward_and_backward_through_both_kernels(op, module, kernels, grad_shapes):
    with recording(module, kernels) as launches:  # recorded, not run: the shapes are the recipe's
        case = next(bench.batch_setup((op, 1), torch.device("cpu")))
        assert list(case.paths) == ["triton"] and case.fields == {"op": op, "B": 1} and case.nbytes["frac_copy"] > 0
        for _ in range(2):
            launches.clear()
            grads = case.paths["triton"]()
            assert [launch.kernel.fn.__name__ for launch in launches] == kernels
            assert [tuple(g.shape) for g in grads] == grad_shapes


def test_batches_on_cpu_say_they_need_cuda_and_write_no_rows(tmp_path, capsys):
    run_cases("op_batch", argparse.Namespace(device="cpu", quick=True, out=tmp_path), bench.batch_specs,
              bench.batch_setup, cuda_only=True)
    assert "needs CUDA" in capsys.readouterr().out
    result = json.loads((tmp_path / "op_batch.json").read_text())
    assert result["rows"] == [] and result["skipped"] == ["needs CUDA"]
