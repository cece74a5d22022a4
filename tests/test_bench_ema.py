"""No benchmark reports a fraction of copy that cannot be true: none on a CPU (caches and write-allocate make it
meaningless there), and one above MAX_FRACTION of a copy of the same bytes is refused."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import bench_ema
from benchmarks.harness import fraction_of_copy, run_cases


def test_a_fraction_above_the_ceiling_is_refused():
    assert fraction_of_copy(1.04, 1.0) == pytest.approx(1.04)  # an H200's packed EMA update: plausible
    with pytest.raises(ValueError, match="400% of a copy of the same bytes.*byte count or the reference is wrong"):
        fraction_of_copy(4.0, 1.0)
    assert fraction_of_copy(4.0, None) is None  # no reference, no fraction


def test_a_cpu_run_reports_bandwidth_without_a_fraction(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_ema, "level_shapes", lambda divisor: [[torch.Size([64, 32])] * 4] * 3)
    args = argparse.Namespace(device="cpu", quick=True, out=tmp_path)
    run_cases("ema", args, lambda device, quick: [10], bench_ema.setup)
    result = json.loads((tmp_path / "ema.json").read_text())
    assert [r["path"] for r in result["rows"]] == ["python loop", "foreach per level", "packed, torch slices"]
    assert all(row["gbps"] > 0 and row["frac_copy"] is None and row["speedup"] > 0 for row in result["rows"])
    assert "of copy" not in capsys.readouterr().out
