"""benchmarks.harness: ``measure`` picks do_bench or the CUDA-graph replay on CUDA and refuses graph timing on CPU;
``cold_copies`` and ``Cycling`` make a graph's calls read cold memory; ``interleaved`` times functions in turn;
``time_case`` compares every path's output with the baseline's, keeps the others when one fails, takes speedups
under the same timing, and times the fastest again."""
from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import triton.testing

from benchmarks import harness
from benchmarks.harness import (
    Case,
    Cycling,
    cold_copies,
    interleaved,
    launch_settings,
    measure,
    setting_text,
    time_case,
)

CPU = torch.device("cpu")


def test_cuda_timing_picks_do_bench_or_the_graph_replay():
    calls = []

    def fake(name):
        def bench(fn, **kwargs):
            calls.append((name, kwargs["quantiles"]))
            return [1.0, 2.0, 3.0]
        return bench

    cuda = torch.device("cuda")
    with mock.patch.object(triton.testing, "do_bench", fake("do_bench")), \
            mock.patch.object(triton.testing, "do_bench_cudagraph", fake("cudagraph")):
        assert measure(lambda: None, cuda) == {"ms": 2.0, "ms_q25": 1.0, "ms_q75": 3.0}
        assert measure(lambda: None, cuda, graph=True) == {"ms": 2.0, "ms_q25": 1.0, "ms_q75": 3.0}
    assert calls == [("do_bench", [0.25, 0.5, 0.75]), ("cudagraph", [0.25, 0.5, 0.75])]


def test_graph_timing_on_cpu_is_refused():
    with pytest.raises(ValueError, match="CUDA"):
        measure(lambda: None, CPU, graph=True)


def test_cold_copies_stream_four_l2_caches_between_two_uses_of_one_copy():
    cuda, mb = torch.device("cuda"), 2**20
    with mock.patch.object(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(L2_cache_size=50 * mb)):
        assert cold_copies(39 * mb, cuda) == 7  # the loss at D 96: the 6 others read 234 MB >= 200 MB > 5 x 39
        assert cold_copies(200 * mb, cuda) == 1 and cold_copies(800 * mb, cuda) == 1  # one call streams enough
        assert cold_copies(1024, cuda) == 8 and cold_copies(1024, cuda, most=3) == 3
        assert cold_copies(39 * mb, cuda, factor=2) == 4
    with mock.patch.object(torch.cuda, "get_device_properties", lambda device: SimpleNamespace()):
        assert cold_copies(39 * mb, cuda) == 7  # no L2 size reported: an H100's 50 MB assumed
    assert cold_copies(39 * mb, CPU) == 1


def test_cycling_takes_the_argument_sets_in_turn_and_restarts():
    seen = []
    run = Cycling(lambda a, b: seen.append((a, b)) or a, [(0, "x"), (1, "y"), (2, "z")])
    assert [run() for _ in range(4)] == [0, 1, 2, 0]
    run.restart()
    assert run() == 0 and seen[-1] == (0, "x")
    with pytest.raises(ValueError, match="argument set"):
        Cycling(print, [])


def test_interleaved_warms_up_then_times_in_rounds():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, CPU, reps=3, calls=2)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # one warm-up call each, then rounds in turn
    assert all(t["reps"] == 3 and t["ms"] > 0 for t in times.values())


def test_a_failing_path_is_recorded_and_the_others_compared_and_timed(capsys):
    x = torch.arange(4.0)

    def broken():
        raise RuntimeError("no kernel image")

    case = Case("toy", {"eager": lambda: x * 1, "broken": broken, "doubled": lambda: x * 2}, {"frac_copy": 10**6})
    errors = []
    rows = time_case(case, CPU, None, errors, reps=3)
    assert [r["path"] for r in rows] == ["eager", "doubled"]
    assert len(errors) == 1 and "broken" in errors[0] and "no kernel image" in errors[0]
    assert [r["max_abs_err"] for r in rows] == [0.0, 3.0]  # against the baseline's output
    assert rows[1]["speedup_vs_eager"] == rows[0]["ms"] / rows[1]["ms"] and rows[0]["speedup_vs_eager"] == 1.0
    assert all(r["gbps"] > 0 and r["frac_copy"] is None for r in rows)  # no copy reference on a CPU


def test_on_cuda_each_path_is_timed_as_a_caller_and_from_a_graph(monkeypatch):
    """Speedups within one timing; ``gap_ms`` the caller's time beyond the graph's; a failed graph timing keeps
    the caller's row and is recorded."""
    def fake(fn, device, graph=False, reps=20):
        if graph and fn is slow:
            raise RuntimeError("operation not permitted when stream is capturing")
        return {"ms": fn() + (0.0 if graph else 0.5), "ms_q25": 0.0, "ms_q75": 0.0}

    fast, slow = (lambda: 1.0), (lambda: 4.0)
    monkeypatch.setattr(harness, "measure", fake)
    errors = []
    rows = time_case(Case("toy", {"eager": slow, "triton": fast}, {"frac_copy": 10**6}), torch.device("cuda"), 1.0,
                     errors)
    assert [(r["path"], r["ms"], r["speedup_vs_eager"]) for r in rows] == [
        ("eager", 4.5, 1.0), ("triton", 1.5, 3.0), ("triton graph", 1.0, None)]
    assert rows[1]["gap_ms"] == rows[2]["gap_ms"] == 0.5 and "gap_ms" not in rows[0]
    assert rows[1]["frac_copy"] == pytest.approx(1 / 1.5) and errors == [
        "toy eager graph: RuntimeError: operation not permitted when stream is capturing"]


def test_the_baseline_and_the_fastest_paths_are_timed_a_second_time(monkeypatch):
    base_ms = {"a": 0.5, "b": 0.9, "c": 0.3, "d": 0.4, "e": 0.2, "f": 0.8}  # the fastest others: e, c, d
    timed = []

    def fake(fn, device, graph=False, reps=20):
        timed.append(fn())
        return {"ms": base_ms[timed[-1]] + 0.01 * timed.count(timed[-1]), "ms_q25": 0.0, "ms_q75": 0.0}

    monkeypatch.setattr(harness, "measure", fake)
    rows = time_case(Case("toy", {k: (lambda k=k: k) for k in base_ms}), torch.device("cuda"), None, [],
                     graph_only=True, again=3)
    assert timed == ["a", "b", "c", "d", "e", "f", "d", "c", "e", "a"]  # the third, second, first fastest, the base
    assert [(r["path"], round(r["ms"], 6)) for r in rows if r.get("round") == 2] == [
        ("d", 0.42), ("c", 0.32), ("e", 0.22), ("a", 0.52)]
    assert all(r["timing"] == "graph" and not r["path"].endswith("graph") for r in rows)


def test_outputs_are_compared_on_the_same_input_copy_when_a_path_cycles_through_copies():
    run = Cycling(lambda x: x * 1.0, [(torch.zeros(3),), (torch.ones(3),)])
    rows = time_case(Case("toy", {"a": run, "b": run}), CPU, None, [], reps=3)
    assert [r["max_abs_err"] for r in rows] == [0.0, 0.0]


def test_launch_settings_fill_the_keywords_the_others_name_with_the_defaults():
    def launch(shape, *, block: int = 4096, warps: tuple[int, int] = (4, 4), stages: int = 1):
        return shape

    full = launch_settings(launch, [{}, {"warps": [8, 8]}, {"block": 1024}])
    assert full == [{"block": 4096, "warps": (4, 4)}, {"block": 4096, "warps": (8, 8)},
                    {"block": 1024, "warps": (4, 4)}]  # in the signature's order, lists as tuples, stages unnamed
    assert [setting_text(s, full[0]) for s in full] == ["default", "warps=8/8", "block=1024"]


def test_a_case_with_inputs_takes_them_in_turn_on_every_path():
    case = Case("toy", {"a": lambda x: x, "b": lambda x: -x}, inputs=[(1,), (2,)])
    assert [case.paths["a"]() for _ in range(3)] == [1, 2, 1] and case.paths["b"]() == -1
