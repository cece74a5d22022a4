"""benchmarks.sweep_launch's sweep: every setting timed and compared with the default's output, the
module's launch attributes restored after each (also after a setting that fails), failures left out."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from benchmarks import sweep_launch
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
    assert [r["path"] for r in rows] == ["tile=4 warps=2", "tile=8 warps=2"]  # the failing setting is left out
    assert [r["default"] for r in rows] == [True, False]
    assert rows[0]["max_abs_diff"] == 0 and rows[1]["max_abs_diff"] == 7.0  # x*2 - x at its largest
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
