"""The benchmarks' cases under pytest-benchmark at small CPU shapes, built by the same setup functions the
benchmark scripts time: ``pytest benchmarks/ --benchmark-only`` (``--benchmark-autosave``, then
``--benchmark-compare``). Not in the default ``pytest`` run (testpaths is tests/); nothing here asserts a time.

Cases: the tiny config's training step (``bench_train_step``'s variants that need no compilation), the masked
losses' and the pooling's eager and SDPA paths, the EMA's per-level foreach and packed step, and the planning
sweep (``bench_planning --quick``, one round, its JSON checked for completeness, not for speed)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_ema, bench_masked_loss, bench_planning, bench_temporal_pool, bench_train_step

CPU = torch.device("cpu")
ROUNDS = {"rounds": 5, "warmup_rounds": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared machine two spinning OpenMP threads stall small ops for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _path(setup, spec, path: str, case: int = 0):
    return list(setup(spec, CPU, True))[case].paths[path]


@pytest.mark.parametrize("variant", ["baseline", "kernels=reference", "activation checkpointing"])
def test_train_step_tiny(benchmark, variant):
    todo, _ = bench_train_step.variants(CPU, quick=True, levels=3)
    chosen = {v.name: v for v in todo}
    prepared = bench_train_step.prepare(bench_train_step.variant_config("tiny_cpu", chosen[variant], 4), CPU)
    benchmark.extra_info["flops_per_step"] = prepared.flops.train_step
    benchmark.pedantic(prepared.step, **ROUNDS)


@pytest.mark.parametrize("op", list(bench_masked_loss.OPS))
def test_masked_loss_fwd_bwd(benchmark, op):
    B, M, N, D = bench_masked_loss.QUICK_SHAPES["cpu"][0]
    benchmark.pedantic(_path(bench_masked_loss.setup, (op, (B, M, N, D, B)), "eager"), **ROUNDS)


@pytest.mark.parametrize("path", ["foreach per level", "packed, torch slices"])
def test_ema(benchmark, path):
    benchmark.pedantic(_path(bench_ema.setup, 100, path), **ROUNDS)


@pytest.mark.parametrize("path", ["eager", "sdpa"])
def test_temporal_pool_fwd_bwd(benchmark, path):
    benchmark.pedantic(_path(bench_temporal_pool.setup, (1, 4, torch.float32, False), path, case=1), **ROUNDS)


def test_planning_quick(benchmark, tmp_path):
    """``bench_planning --quick`` on CPU, one iteration per plan (~10 s): a row per (planner, levels,
    candidates), positive times, FLOPs per action that grow with the candidates, the log-log plot."""
    argv = ["--quick", "--device", "cpu", "--iterations", "1", "--out", str(tmp_path)]
    benchmark.pedantic(bench_planning.main, args=(argv,), rounds=1, iterations=1)
    rows = json.loads((tmp_path / "planning.json").read_text())["rows"]
    expected = [(p, k, n) for p in bench_planning.PLANNERS for k in (1, 2) for n in bench_planning.QUICK_CANDIDATES]
    assert sorted((r["planner"], r["levels"], r["candidates"]) for r in rows) == sorted(expected)
    assert all(r["ms_per_action"] > 0 and r["flops_per_action"] > 0 and r["gflops_per_s"] > 0 for r in rows)
    for planner in bench_planning.PLANNERS:
        for levels in (1, 2):
            line = sorted((r["candidates"], r["flops_per_action"]) for r in rows
                          if (r["planner"], r["levels"]) == (planner, levels))
            assert all(a[1] < b[1] for a, b in zip(line, line[1:])), (planner, levels, line)
    assert (tmp_path / "planning_loglog.png").is_file()
