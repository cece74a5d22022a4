"""benchmarks.run's summary table: every row, and a line for a benchmark that failed or measured nothing."""
from __future__ import annotations

from benchmarks.run import table


def test_table_lists_rows_and_says_why_a_benchmark_has_none():
    results = {
        "ema": {"status": "ok", "rows": [{"shape": "99.6M", "path": "packed", "ms": 0.28, "ms_q25": 0.27,
                                          "ms_q75": 0.29, "frac_copy": 1.04}]},
        "op_batch": {"status": "ok", "rows": [], "skipped": ["needs CUDA"]},
        "scaling": {"status": "ok", "rows": []},
        "masked_loss": {"status": "timeout", "rows": []},
    }
    lines = table(results).splitlines()
    assert lines[2] == "| ema | 99.6M | packed | 0.280 | 0.270-0.290 | 104% of copy |"
    assert lines[3:] == ["| op_batch | (skipped: needs CUDA) | | | | |", "| scaling | (skipped: no rows) | | | | |",
                         "| masked_loss | (timeout) | | | | |"]
