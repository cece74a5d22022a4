"""benchmarks.bench_op_batch: each op's call is a forward + backward through the public Triton function that reaches
both kernels once per call; on CPU it says it needs CUDA."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from cuda_compile import recording

from benchmarks import bench_op_batch as bench
from benchmarks.harness import run_cases
from hjepa_fast.kernels import masked_loss as ml
from hjepa_fast.kernels import temporal_pool as tp


@pytest.mark.parametrize("op,module,kernels,grad_shapes", [
    ("masked_l2_loss", ml, ["_masked_loss_fwd_kernel", "_scale_kernel"], [(1, 1176, 768)]),
    ("temporal_attention_pool", tp, ["_pool_fwd_kernel", "_pool_bwd_kernel"],
     [(12, 64), (1, 32, 196, 12, 64), (1, 32, 196, 12, 64)]),
])
def test_each_call_is_one_forward_and_backward_through_both_kernels(op, module, kernels, grad_shapes):
    with recording(module, kernels) as launches:  # recorded, not run: the shapes are the recipe's
        case = next(bench.setup((op, 1), torch.device("cpu")))
        assert list(case.paths) == ["triton"] and case.fields == {"op": op, "B": 1} and case.nbytes["frac_copy"] > 0
        for _ in range(2):
            launches.clear()
            grads = case.paths["triton"]()
            assert [launch.kernel.fn.__name__ for launch in launches] == kernels
            assert [tuple(g.shape) for g in grads] == grad_shapes


def test_on_cpu_it_says_it_needs_cuda_and_writes_no_rows(tmp_path, capsys):
    run_cases("op_batch", argparse.Namespace(device="cpu", quick=True, out=tmp_path), bench.specs, bench.setup,
              cuda_only=True)
    assert "needs CUDA" in capsys.readouterr().out
    result = json.loads((tmp_path / "op_batch.json").read_text())
    assert result["rows"] == [] and result["skipped"] == ["needs CUDA"]
