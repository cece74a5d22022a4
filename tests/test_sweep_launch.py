"""benchmarks.sweep_launch's sweep: every setting (keyword arguments of an op's launch-settings function)
timed and compared with the default's output, failures left out; every case's settings name keywords its
settings function has."""
from __future__ import annotations

from unittest import mock

import torch

from benchmarks import sweep_launch
from benchmarks.harness import Cycling
from benchmarks.sweep_launch import sweep, with_default


def toy_launch(n: int, *, tile: int = 4, warps: int = 2) -> tuple[int, int]:
    """A launch-settings function: its keyword defaults are the default setting."""
    return tile, warps


def test_sweep_flags_the_default_and_measures_the_difference():
    x = torch.arange(8.0)
    seen = []

    def run(setting):
        seen.append((setting["tile"], setting["warps"]))
        if setting["tile"] == 16:
            raise RuntimeError("out of resources")  # a setting the compiler refuses
        return (x * (1 if setting["tile"] == 4 else 2),)

    settings = with_default(toy_launch, [{"tile": tile, "warps": 2} for tile in (8, 4, 16)])
    assert settings[0] == {"tile": 4, "warps": 2} and len(settings) == 3
    rows = sweep("toy", toy_launch, settings, run, nbytes=64, copy_gbps=1.0, device=torch.device("cpu"))
    # the failing setting is left out; the others timed again, in reverse order
    assert [(r["path"], r["round"]) for r in rows] == [("tile=4 warps=2", 1), ("tile=8 warps=2", 1),
                                                        ("tile=8 warps=2", 2), ("tile=4 warps=2", 2)]
    assert [r["default"] for r in rows] == [True, False, False, True]
    assert [r["max_abs_diff"] for r in rows] == [0, 7.0, 7.0, 0]  # x*2 - x at its largest
    assert all(r["ms"] > 0 and r["gbps"] > 0 for r in rows)
    assert all(r["timing"] == "launch" for r in rows)  # no CUDA graph on a CPU: timed as launches, and said so
    assert (16, 2) in seen


def test_every_case_sweeps_keywords_its_settings_function_takes_default_first():
    """A misspelt keyword would fail every setting on the GPU; each setting gives the settings function a
    launch for a CUDA device."""
    for make_cases in sweep_launch.CASES.values():
        for case in make_cases(torch.device("cpu"), quick=True):
            default = sweep_launch.default_setting(case.settings_fn, case.settings[0])
            assert case.settings[0] == default, case.name
            assert all(set(s) == set(default) for s in case.settings), case.name
            assert len(case.settings) > 1 and case.nbytes > 0
            args = {"masked_loss_launch": ((128, 784, 768), torch.bfloat16),
                    "temporal_pool_launch": ((32, 32, 196, 12, 64), 4, torch.bfloat16),
                    "ema_launch": (10**8, torch.float32)}[case.settings_fn.__name__]
            assert all(case.settings_fn(*args, "cuda", **s) for s in case.settings), case.name
    names = [c.name for c in sweep_launch.temporal_pool_cases(torch.device("cpu"), quick=True)]
    assert names == ["temporal_pool fwd B4 T32", "temporal_pool bwd B4 T32", "temporal_pool fwd masked B4 T32",
                     "temporal_pool bwd masked B4 T32"]


def test_the_default_and_the_fastest_settings_are_timed_a_second_time_under_their_own_setting():
    base_ms = {1: 0.5, 2: 0.9, 3: 0.3, 4: 0.4, 5: 0.2, 6: 0.8}  # by tile: the fastest others are 5, 3, 4
    timed = []

    def launch(*, tile: int = 1) -> int:
        return tile

    def fake_time(run, device):
        tile = int(run()[0])  # the setting the timed launch runs under
        timed.append(tile)
        return {"ms": base_ms[tile] + 0.01 * timed.count(tile), "timing": "graph"}

    settings = with_default(launch, [{"tile": t} for t in base_ms])
    with mock.patch.object(sweep_launch, "measure_device_time", fake_time):
        rows = sweep("toy", launch, settings, lambda setting: (torch.tensor(setting["tile"]),), 8, 1.0,
                     torch.device("cpu"))
    assert timed == [1, 2, 3, 4, 5, 6, 4, 3, 5, 1]  # the second round: 3rd, 2nd, 1st fastest, then the default
    again = [r for r in rows if r["round"] == 2]
    assert [(r["path"], round(r["ms"], 6), r["default"]) for r in again] == [
        ("tile=4", 0.42, False), ("tile=3", 0.32, False), ("tile=5", 0.22, False), ("tile=1", 0.52, True)]


def test_outputs_are_compared_on_the_same_input_copy_when_the_launch_cycles_through_copies():
    """The loss cases cycle through input copies (cold graph timing); ``reset=run.restart`` puts every
    comparison back on the first copy, so a setting that computes the same thing shows no difference."""
    run = Cycling(lambda x, setting: (x * 1.0,), [(torch.zeros(3),), (torch.ones(3),)])
    rows = sweep("toy", toy_launch, with_default(toy_launch, [{"tile": 2}]), run, 8, 1.0, torch.device("cpu"),
                 reset=run.restart)
    assert [r["max_abs_diff"] for r in rows if r["round"] == 1] == [0.0, 0.0]
