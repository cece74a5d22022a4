"""benchmarks.sweep_launch's sweep: every setting timed and compared with the default's output, the
module's launch attributes restored after each (also after a setting that fails), failures left out."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from benchmarks.sweep_launch import grid, sweep, with_default


def test_sweep_restores_settings_flags_the_default_and_measures_the_difference():
    module = SimpleNamespace(TILE=4, WARPS=2)
    x = torch.arange(8.0)
    seen = []

    def run():
        seen.append((module.TILE, module.WARPS))
        if module.TILE == 16:
            raise RuntimeError("out of resources")  # a setting the compiler refuses
        return (x * (1 if module.TILE == 4 else 2),)

    settings = with_default(module, grid(TILE=[8, 4, 16], WARPS=[2]))
    assert settings[0] == {"TILE": 4, "WARPS": 2} and len(settings) == 3
    rows = sweep("toy", module, settings, run, nbytes=64, copy_gbps=1.0, device=torch.device("cpu"))
    assert (module.TILE, module.WARPS) == (4, 2)  # restored
    assert [r["path"] for r in rows] == ["tile=4 warps=2", "tile=8 warps=2"]  # the failing setting is left out
    assert [r["default"] for r in rows] == [True, False]
    assert rows[0]["max_abs_diff"] == 0 and rows[1]["max_abs_diff"] == 7.0  # x*2 - x at its largest
    assert all(r["ms"] > 0 and r["gbps"] > 0 for r in rows)
    assert all(r["timing"] == "launch" for r in rows)  # no CUDA graph on a CPU: timed as launches, and said so
    assert (16, 2) in seen
