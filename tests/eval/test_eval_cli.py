"""``hjepa eval`` with its options, and bad input refused with a message that names it."""
from __future__ import annotations

import json

import pytest

from hjepa_fast.cli import main

TINY_RUN = ["model.img_size=24", "model.encoder_dims=[32,32,32]", "model.encoder_depths=[1,1,1]",
            "model.encoder_heads=[2,2,2]", "model.predictor_dims=[16,16,16]", "model.predictor_depths=[1,1,1]",
            "model.predictor_heads=[2,2,2]", "masks.min_keep=4", "train.batch_size=4", "train.steps=2",
            "train.warmup_steps=1", "eval.train_clips=48", "eval.val_clips=24", "eval.batch_size=24",
            "model.predictor_init=trunc_normal"]  # a predictor that ignores its context (see the warning test)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", f"train.out_dir={out}",
                 "train.run_name=r", *TINY_RUN]) == 0
    return out / "r"


def test_eval_writes_probes_horizon_and_collapse(run_dir, capsys):
    assert main(["eval", "--run", str(run_dir), "--labels", "speed", "digit", "--horizon", "2"]) == 0
    out = capsys.readouterr().out
    assert "speed trained" in out and "future-state error" in out and "RankMe" in out
    # std-0.02 predictor layers pass almost none of the context at initialisation, and two training steps
    # do not change that: the context-blind predictors fail the check, and the output says so
    assert "prediction spread" in out and "WARNING: level1, level2, level3 predict(s) nearly the same" in out
    result = json.loads((run_dir / "eval.json").read_text())
    assert list(result["trained"]["all"]) == ["speed", "digit"]
    assert result["horizon"]["trained"]["level1"]["horizon"] == [1, 2]
    assert result["horizon"]["random"]["level3"]["horizon"] == [1]
    assert set(result["collapse"]["trained"]) == {"level1", "level2", "level3"}
    assert (run_dir / "horizon.png").is_file()
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"spread_l1", "rankme_l3"} <= set(header)  # the trainer logs the collapse diagnostics


@pytest.mark.parametrize("args,message", [
    (["--labels", "colour"],
     "label 'colour' is not a label of data set moving_digits (it has: digit, direction, speed)"),
    (["--horizon", "5"], "eval.horizon=5 is beyond the clip"),
])
def test_bad_eval_settings_are_refused_by_name(run_dir, args, message, capsys):
    assert main(["eval", "--run", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_run_folder_without_a_checkpoint_is_refused(run_dir, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert main(["eval", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} has no checkpoint" in err and "checkpoint.pt" in err and "checkpoint_ds" in err


def test_the_report_warns_about_context_blind_and_collapsed_levels_only():
    from hjepa_fast.eval.probe import format_table

    def curve(spread):
        return {"horizon": [1], "frames_ahead": [2], "error": [6.0], "error_raw": [7.0], "floor": [1.0],
                "copy_last": [7.0], "mean_state": [6.0], "spread_ratio": spread}

    def collapse(spread, rankme):
        return {"spread": spread, "rankme": rankme, "dim": 8, "collapsed": rankme < 1.5 or spread < 1e-3}

    result = {"step": 5, "trained": {"level1": {"digit": 0.5}, "level2": {"digit": 0.4}},
              "random": {"level1": {"digit": 0.3}, "level2": {"digit": 0.3}},
              "horizon": {"trained": {"level1": curve(0.6), "level2": curve(0.01)},
                          "random": {"level1": curve(0.0), "level2": curve(0.0)}},
              "collapse": {"trained": {"level1": collapse(0.0001, 1.0), "level2": collapse(0.5, 6.0)},
                           "random": {"level1": collapse(0.5, 6.0), "level2": collapse(0.5, 6.0)}},
              "context_frames": 8, "state_units": "px"}
    warnings = [line for line in format_table(result).splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2
    assert "level2 predict(s) nearly the same" in warnings[0] and "level1" not in warnings[0]
    assert warnings[1].startswith("WARNING: level1 collapsed") and "level2" not in warnings[1]
