"""The benchmarks' cases at small CPU shapes under pytest-benchmark, built by the benchmarks' own setups:
``pytest benchmarks/ --benchmark-only`` (``--benchmark-autosave``, ``--benchmark-compare``). Not in the default
``pytest`` run; nothing here asserts a time (the planning sweep's JSON is checked for completeness)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_ema, bench_masked_loss, bench_planning, bench_temporal_pool, bench_train_step

CPU = torch.device("cpu")
ROUNDS = {"rounds": 5, "warmup_rounds": 1}


@pytest.fixture(autouse=True)
def _one_thread():  # on a shared machine two spinning OpenMP threads stall small ops for seconds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _path(setup, spec, path: str, case: int = 0):
    return list(setup(spec, CPU, True))[case].paths[path]


@pytest.mark.parametrize("variant", ["baseline", "kernels=reference", "activation checkpointing"])
def test_train_step_tiny(benchmark, variant):
    chosen = next(v for v in bench_train_step.variants(CPU, quick=True, levels=3)[0] if v.name == variant)
    prepared = bench_train_step.prepare(bench_train_step.variant_config("tiny_cpu", chosen, 4), CPU)
    benchmark.extra_info["flops_per_step"] = prepared.flops.train_step
    benchmark.pedantic(prepared.step, **ROUNDS)


@pytest.mark.parametrize("op", list(bench_masked_loss.OPS))
def test_masked_loss_fwd_bwd(benchmark, op):
    shape = tuple(bench_masked_loss.CASES["masked_loss"]["quick_shapes"]["cpu"][0])
    benchmark.pedantic(_path(bench_masked_loss.setup, (op, shape), "eager"), **ROUNDS)


@pytest.mark.parametrize("path", ["foreach per level", "packed, torch slices"])
def test_ema(benchmark, path):
    benchmark.pedantic(_path(bench_ema.setup, 100, path), **ROUNDS)


@pytest.mark.parametrize("path", ["eager"])
def test_temporal_pool_fwd_bwd(benchmark, path):
    benchmark.pedantic(_path(bench_temporal_pool.setup, (1, 4, torch.float32, False), path, case=1), **ROUNDS)


def test_planning_quick(benchmark, tmp_path):
    """A row per (planner, levels, candidates), FLOPs per action growing with the candidates."""
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
