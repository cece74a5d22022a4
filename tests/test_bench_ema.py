"""The EMA benchmark reports no fraction of copy that cannot be true: none on a CPU (no meaningful
reference there), and a fraction above MAX_FRACTION of a copy of the same bytes is refused."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks import bench_ema


def test_a_fraction_above_the_ceiling_is_refused():
    assert bench_ema.fraction_of_copy(1.04, 1.0) == pytest.approx(1.04)  # an H200's packed update: plausible
    with pytest.raises(ValueError, match="400% of a copy of the same bytes.*byte count or the reference is wrong"):
        bench_ema.fraction_of_copy(4.0, 1.0)  # what --quick reported on a CPU
    assert bench_ema.fraction_of_copy(4.0, None) is None  # no reference, no fraction


def test_a_cpu_run_reports_bandwidth_without_a_fraction(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_ema, "level_shapes", lambda quick: [[torch.Size([64, 32])] * 4] * 3)
    monkeypatch.setattr(sys, "argv", ["bench_ema", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    bench_ema.main()
    result = json.loads((tmp_path / "ema.json").read_text())
    assert result["copy_gbps"] is None and len(result["rows"]) == 3
    assert all(row["gbps"] > 0 and row["frac_copy"] is None for row in result["rows"])
    assert "of copy" not in capsys.readouterr().out
