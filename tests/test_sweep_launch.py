"""benchmarks.sweep_launch's sweep: every setting timed and compared with the default's output, the
module's launch attributes restored after each (also after a setting that fails), failures left out."""
from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import torch

from benchmarks import sweep_launch
from benchmarks.harness import Cycling
from benchmarks.sweep_launch import sweep, with_default


def test_sweep_restores_settings_flags_the_default_and_measures_the_difference():
    module = SimpleNamespace(TILE=4, WARPS=2)
    x = torch.arange(8.0)
    seen = []

    def run():
        seen.append((module.TILE, module.WARPS))
        if module.TILE == 16:
            raise RuntimeError("out of resources")  # a setting the compiler refuses
        return (x * (1 if module.TILE == 4 else 2),)

    settings = with_default(module, [{"TILE": tile, "WARPS": 2} for tile in (8, 4, 16)])
    assert settings[0] == {"TILE": 4, "WARPS": 2} and len(settings) == 3
    rows = sweep("toy", module, settings, run, nbytes=64, copy_gbps=1.0, device=torch.device("cpu"))
    assert (module.TILE, module.WARPS) == (4, 2)  # restored
    # the failing setting is left out; the others timed again, in reverse order
    assert [(r["path"], r["round"]) for r in rows] == [("tile=4 warps=2", 1), ("tile=8 warps=2", 1),
                                                        ("tile=8 warps=2", 2), ("tile=4 warps=2", 2)]
    assert [r["default"] for r in rows] == [True, False, False, True]
    assert [r["max_abs_diff"] for r in rows] == [0, 7.0, 7.0, 0]  # x*2 - x at its largest
    assert all(r["ms"] > 0 and r["gbps"] > 0 for r in rows)
    assert all(r["timing"] == "launch" for r in rows)  # no CUDA graph on a CPU: timed as launches, and said so
    assert (16, 2) in seen


def test_every_case_sweeps_launch_attributes_its_module_has_default_first():
    """A misspelt attribute would fail every setting on the GPU (``mock.patch.multiple`` creates none)."""
    for make_cases in sweep_launch.CASES.values():
        for case in make_cases(torch.device("cpu"), quick=True):
            default = sweep_launch.current_setting(case.module, case.settings[0])
            assert case.settings[0] == default, case.name
            assert all(set(s) == set(default) for s in case.settings), case.name
            assert len(case.settings) > 1 and case.nbytes > 0
    names = [c.name for c in sweep_launch.temporal_pool_cases(torch.device("cpu"), quick=True)]
    assert names == ["temporal_pool fwd B4 T32", "temporal_pool bwd B4 T32", "temporal_pool fwd masked B4 T32",
                     "temporal_pool bwd masked B4 T32"]


def test_the_default_and_the_fastest_settings_are_timed_a_second_time_under_their_own_setting():
    module = SimpleNamespace(TILE=1)
    base_ms = {1: 0.5, 2: 0.9, 3: 0.3, 4: 0.4, 5: 0.2, 6: 0.8}  # by TILE: the fastest others are 5, 3, 4
    timed = []

    def fake_time(run, device):
        timed.append(module.TILE)
        return {"ms": base_ms[module.TILE] + 0.01 * timed.count(module.TILE), "timing": "graph"}

    settings = with_default(module, [{"TILE": t} for t in base_ms])
    with mock.patch.object(sweep_launch, "measure_device_time", fake_time):
        rows = sweep("toy", module, settings, lambda: (torch.zeros(2),), 8, 1.0, torch.device("cpu"))
    assert timed == [1, 2, 3, 4, 5, 6, 4, 3, 5, 1]  # the second round: 3rd, 2nd, 1st fastest, then the default
    again = [r for r in rows if r["round"] == 2]
    assert [(r["path"], round(r["ms"], 6), r["default"]) for r in again] == [
        ("tile=4", 0.42, False), ("tile=3", 0.32, False), ("tile=5", 0.22, False), ("tile=1", 0.52, True)]
    assert module.TILE == 1


def test_outputs_are_compared_on_the_same_input_copy_when_the_launch_cycles_through_copies():
    """The loss cases cycle through input copies (cold graph timing); ``reset=run.restart`` puts every
    comparison back on the first copy, so a setting that computes the same thing shows no difference."""
    module = SimpleNamespace(TILE=1)
    run = Cycling(lambda x: (x * 1.0,), [(torch.zeros(3),), (torch.ones(3),)])
    rows = sweep("toy", module, with_default(module, [{"TILE": 2}]), run, 8, 1.0, torch.device("cpu"),
                 reset=run.restart)
    assert [r["max_abs_diff"] for r in rows if r["round"] == 1] == [0.0, 0.0]
