"""benchmarks.run's summary table: every row, and a line for a benchmark that failed or measured nothing."""
from __future__ import annotations

from benchmarks.harness import row_line
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


def test_a_training_step_row_reads_the_same_in_the_table_and_the_printed_line():
    """Its case is the config and micro-batch, its path the variant; fields a row lacks or has as None are left
    out of the details."""
    row = {"config": "tiny_cpu", "batch": 32, "variant": "fast", "ms": 10.0, "ms_q25": 9.0, "ms_q75": 11.0,
           "clips_per_s": 3200.0, "speedup": 1.5, "mfu": None}
    line = table({"train_step": {"status": "ok", "rows": [row]}}).splitlines()[2]
    assert line == "| train_step | tiny_cpu B32 | fast | 10.000 | 9.000-11.000 | x1.50, 3200.0 clips/s |"
    assert row_line(row).split() == ["tiny_cpu", "B32", "fast", "10.000", "ms", "(IQR", "9.000-11.000)", "x1.50,",
                                     "3200.0", "clips/s"]
