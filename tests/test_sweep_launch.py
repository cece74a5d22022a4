"""benchmarks.sweep_launch: every case's settings are keywords its launch-settings function takes, the default first
(a misspelt keyword would fail every setting on the GPU); each case times every setting under its own launch and
compares its output with the default's on the same inputs."""
from __future__ import annotations

import torch

from benchmarks import sweep_launch
from benchmarks.harness import default_setting, time_case


def test_every_case_names_keywords_its_settings_function_takes():
    args = {"masked_loss_launch": ((128, 784, 768), torch.bfloat16), "ema_launch": (10**8, torch.float32),
            "temporal_pool_launch": ((32, 32, 196, 12, 64), 4, torch.bfloat16)}
    for case, (settings_fn, settings) in sweep_launch.SETTINGS.items():
        default = default_setting(settings_fn, settings[0])
        assert all(set(s) == set(default) for s in settings) and len(settings) > 1, case
        assert all(settings_fn(*args[settings_fn.__name__], "cuda", **s) for s in [default, *settings]), case
    assert [c for c in sweep_launch.SETTINGS if c.startswith("temporal_pool")] == [
        "temporal_pool fwd", "temporal_pool bwd", "temporal_pool fwd masked", "temporal_pool bwd masked"]


def test_a_case_times_each_setting_under_its_own_launch(monkeypatch):
    seen = []
    ema_launch = sweep_launch.ema.ema_launch

    def recording_launch(n, dtype, device, **setting):
        seen.append(setting)
        return ema_launch(n, dtype, device, **setting)

    monkeypatch.setattr(sweep_launch.ema, "ema_launch", recording_launch)
    monkeypatch.setitem(sweep_launch.SETTINGS, "ema", (ema_launch, [{"block": 1024, "warps": 4}]))
    monkeypatch.setitem(sweep_launch.EMA_SIZE, "quick", 5000)
    case = next(sweep_launch.setup("ema", torch.device("cpu"), quick=True))
    assert list(case.paths) == ["default", "block=1024 warps=4"] and case.nbytes == {"frac_copy": 12 * 5000}
    rows = time_case(case, torch.device("cpu"), None, [], reps=3)
    assert [r["max_abs_err"] for r in rows] == [0.0, 0.0]  # each compared after the inputs' reset
    assert {"block": 1024, "warps": 4} in seen and {"block": 4096, "warps": 8} in seen
