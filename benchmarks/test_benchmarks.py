"""The benchmark cases under pytest-benchmark, at small CPU shapes: ``pytest benchmarks/ --benchmark-only``
(compare saved runs with ``--benchmark-autosave`` and ``pytest-benchmark compare``). Not in the default
``pytest`` run (testpaths is tests/); nothing here asserts a time.

Cases: the end-to-end training step of the tiny config (``bench_train_step``'s variants that need no
compilation), the masked latent loss forward + backward (``bench_masked_loss``'s reference), the packed
multi-level EMA and a per-level foreach (``bench_ema``), temporal attention pooling (``bench_temporal_pool``'s
reference and SDPA paths) and the planning-speed sweep (``bench_planning --quick``, one round, its JSON
checked for completeness, not for speed)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_ema, bench_masked_loss, bench_planning, bench_temporal_pool, bench_train_step
from hjepa_fast.kernels import EMASchedule, MultiLevelEMA, kernel_mode

CPU = torch.device("cpu")
ROUNDS = {"rounds": 5, "warmup_rounds": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared machine two spinning OpenMP threads stall small ops for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", ["baseline", "kernels=reference", "activation checkpointing"])
def test_train_step_tiny(benchmark, variant):
    todo, _ = bench_train_step.variants(CPU, quick=True, levels=3)
    chosen = {v.name: v for v in todo}
    if variant not in chosen:
        pytest.skip(f"{variant} is not available in this version")
    prepared = bench_train_step.prepare(bench_train_step.variant_config("tiny_cpu", chosen[variant], 4), CPU)
    benchmark.extra_info["flops_per_step"] = prepared.flops.train_step
    benchmark.pedantic(prepared.step, **ROUNDS)


@pytest.mark.parametrize("op", list(bench_masked_loss.OPS))
def test_masked_loss_fwd_bwd(benchmark, op):
    B, M, N, D = bench_masked_loss.QUICK_SHAPES["cpu"][0]
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(B, M, D, generator=g).requires_grad_()
    target = torch.randn(B, N, D, generator=g)
    idx = torch.rand(B, N, generator=g).argsort(1)[:, :M].contiguous()
    reference = bench_masked_loss.OPS[op][0]
    benchmark.pedantic(lambda: torch.autograd.grad(reference(pred, target, idx), pred), **ROUNDS)


@pytest.mark.parametrize("path", ["foreach per level", "packed, torch slices"])
def test_ema(benchmark, path):
    shapes = [group[:20] for group in bench_ema.level_shapes(quick=True)]  # 60 tensors
    targets, sources = ([[torch.randn(s) for s in group] for group in shapes] for _ in range(2))
    taus = bench_ema.TAUS
    if path == "foreach per level":
        def step() -> None:
            for tg, sg, tau in zip(targets, sources, taus):
                torch._foreach_lerp_(tg, sg, 1.0 - tau)
    else:
        ema = MultiLevelEMA(targets, sources, EMASchedule(taus, taus, total_steps=1))

        def step() -> None:
            with kernel_mode("reference"):
                ema.step(0)
    benchmark.pedantic(step, **ROUNDS)


@pytest.mark.parametrize("path", ["eager", "sdpa"])
def test_temporal_pool_fwd_bwd(benchmark, path):
    fn = {"eager": bench_temporal_pool.temporal_attention_pool_reference, "sdpa": bench_temporal_pool.sdpa_pool}[path]
    g = torch.Generator().manual_seed(0)
    B, T, N, H, Dh, window = 1, 8, 49, 4, 16, bench_temporal_pool.WINDOW
    q = (torch.randn(H, Dh, generator=g) * Dh**-0.5).requires_grad_()
    k, v = (torch.randn(B, T, N, H, Dh, generator=g).requires_grad_() for _ in range(2))
    benchmark.pedantic(lambda: torch.autograd.grad(fn(q, k, v, window).sum(), (q, k, v)), **ROUNDS)


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
