"""The README's first command end to end: the tiny CPU run must beat its random initialisation on a
linear probe of the digit class (all levels concatenated), and every level's predictions must vary from
clip to clip more than at initialisation (a predictor that reads its context). Slow: a few minutes on 2
cores."""
from __future__ import annotations

import pytest

from hjepa_fast.cli import main
from hjepa_fast.eval.probe import evaluate_run


@pytest.mark.slow
def test_tiny_cpu_run_beats_its_random_baseline(tmp_path):
    assert main(["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", f"train.out_dir={tmp_path}",
                 "train.run_name=run"]) == 0
    result = evaluate_run(tmp_path / "run")
    assert result["trained"]["all"]["digit"] > result["random"]["all"]["digit"]
    trained, random = result["horizon"]["trained"], result["horizon"]["random"]
    for level in trained:
        assert trained[level]["spread_ratio"] > random[level]["spread_ratio"], level
