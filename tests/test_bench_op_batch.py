"""benchmarks.bench_op_batch: each op's call is a forward + backward through the public Triton function that
reaches both kernels once per call, and its rows give the caller's time, the device's, and their gap."""
from __future__ import annotations

import pytest
import torch

from benchmarks import bench_op_batch as bench
from benchmarks import harness
from benchmarks.cuda_compile import recording
from hjepa_fast.kernels import masked_loss as ml
from hjepa_fast.kernels import temporal_pool as tp

CPU = torch.device("cpu")


def _names(launches) -> list[str]:
    return [launch.kernel.fn.__name__ for launch in launches]


@pytest.mark.parametrize("op,module,kernels,grad_shapes", [
    ("masked_l2_loss", ml, ["_masked_loss_fwd_kernel", "_scale_kernel"], [(1, 1176, 768)]),
    ("temporal_attention_pool", tp, ["_pool_fwd_kernel", "_pool_bwd_kernel"],
     [(12, 64), (1, 32, 196, 12, 64), (1, 32, 196, 12, 64)]),
])
def test_each_call_is_one_forward_and_backward_through_both_kernels(op, module, kernels, grad_shapes):
    with recording(module, kernels) as launches:  # recorded, not run: the shapes are the recipe's
        call, nbytes = bench.CALLS[op](1, CPU)
        for _ in range(2):
            launches.clear()
            grads = call()
            assert _names(launches) == kernels
            assert [tuple(g.shape) for g in grads] == grad_shapes
    assert nbytes > 0


def test_rows_carry_both_timings_and_their_gap():
    times = {"triton": {"ms": 0.8, "ms_q25": 0.7, "ms_q75": 0.9},
             "triton graph": {"ms": 0.5, "ms_q25": 0.5, "ms_q75": 0.5}}
    rows = bench.gap_rows("temporal_attention_pool", 32, times, nbytes=2 * 10**9, copy_gbps=5000.0)
    assert [r["path"] for r in rows] == ["triton", "triton graph"]
    assert all(r["shape"] == "temporal_attention_pool B32" and r["gap_ms"] == pytest.approx(0.3) for r in rows)
    assert [r["frac_copy"] for r in rows] == pytest.approx([0.5, 0.8])  # 2 GB in 0.8 / 0.5 ms against 5 TB/s


def test_on_cpu_it_says_it_needs_cuda_and_writes_no_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_op_batch", "--device", "cpu", "--out", str(tmp_path)])
    bench.main()
    assert "needs CUDA" in capsys.readouterr().out
    assert '"rows": []' in (tmp_path / "op_batch.json").read_text()


def test_a_failed_graph_timing_keeps_the_callers_and_is_recorded(monkeypatch):
    def fake_measure(fn, device, graph=False):
        if graph:
            raise RuntimeError("operation not permitted when stream is capturing")
        return {"ms": 1.0, "ms_q25": 1.0, "ms_q75": 1.0}

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(harness, "timings", lambda device: (False, True))
    errors = []
    times, nbytes = bench.time_batch(lambda B, device: (lambda: None, 10 * B), 4, CPU, errors, "op B4")
    assert times == {"triton": {"ms": 1.0, "ms_q25": 1.0, "ms_q75": 1.0}} and nbytes == 40
    assert len(errors) == 1 and errors[0].startswith("op B4 triton graph: RuntimeError")
    rows = bench.gap_rows("op", 4, times, nbytes, 1.0)
    assert [(r["path"], r["gap_ms"]) for r in rows] == [("triton", None)]
