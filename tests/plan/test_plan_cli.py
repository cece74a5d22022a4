"""The user's path end to end: hjepa collect -> hjepa train on the rollouts -> hjepa plan."""
from __future__ import annotations

import json
import shutil

import pytest

from hjepa_fast.cli import main
from hjepa_fast.plan.evaluate import bucket_success, format_table

SMALL = ["data.frames=8", "masks.context_fraction=[0.5,0.5]", "model.encoder_depths=[1,1]",
         "model.predictor_depths=[1,1]", "train.batch_size=4", "train.steps=2", "train.log_every=1"]


@pytest.mark.slow
def test_collect_train_plan(tmp_path, capsys):
    rollouts = tmp_path / "rollouts"
    assert main(["collect", "--env", "panworld", "--episodes", "3", "--steps", "10", "--out", str(rollouts)]) == 0
    assert main(["train", "--config", "configs/panworld_tiny.yaml", "--no-progress", f"data.root={rollouts}",
                 f"train.out_dir={tmp_path}", "train.run_name=r", *SMALL]) == 0
    assert main(["plan", "--run", str(tmp_path / "r"), "--env", "panworld", "--tasks", "1", "--seeds", "2",
                 "--samples", "8", "--iterations", "1", "--levels", "1", "2", "--match-flops",
                 "--energy-frames", "2", "--energy-path", "--oracle"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "cem flat" in out and "cem hier-2" in out and "cem oracle hier-2" in out
    result = json.loads((tmp_path / "r" / "plan-panworld" / "plan.json").read_text())
    assert set(result["rows"]) == {"random", "cem flat", "cem hier-2", "cem oracle", "cem oracle hier-2"}
    assert result["rows"]["cem oracle"]["flops_per_episode"] > 0
    assert result["rows"]["cem hier-2"]["flops_per_episode"] > 0
    assert result["match_flops"] and 2 <= result["rows"]["cem hier-2"]["samples"] < 8  # the budget of a flat action
    assert result["energy_frames"] == 2 and result["energy_path"]
    assert (tmp_path / "r" / "plan-panworld" / "success_vs_distance.png").is_file()
    assert "success by start distance" in out and ">= 32" in out
    assert [b["from"] for b in result["rows"]["random"]["by_distance"]] == [0.0, 16.0, 32.0]
    assert main(["plan", "--run", str(tmp_path / "r"), "--env", "panworld", "--tasks", "2", "--samples", "4",
                 "--diagnose"]) == 0
    assert "world-model diagnosis" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "r" / "plan-panworld" / "diagnose.json").read_text())["tasks"]) == 2


def test_plan_refuses_a_run_without_actions(tmp_path, capsys):
    assert main(["plan", "--run", str(tmp_path / "none"), "--env", "panworld"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["plan", "--run", str(tmp_path / "none"), "--env", "panworld", "--planner", "grad", "--oracle"]) == 2
    assert "--oracle needs a sampling planner" in capsys.readouterr().err


def test_success_is_reported_per_start_distance_bucket():
    episodes = [{"start_distance": d, "success": ok} for d, ok in
                [(3.0, True), (15.9, False), (16.0, True), (20.0, True), (31.0, False), (50.0, False)]]
    buckets = bucket_success(episodes, (0.0, 16.0, 32.0))
    assert [(b["from"], b["to"], b["episodes"]) for b in buckets] == [(0.0, 16.0, 2), (16.0, 32.0, 3), (32.0, None, 1)]
    assert [b["success"] for b in buckets] == [0.5, pytest.approx(2 / 3), 0.0]
    assert bucket_success(episodes, (0.0, 100.0))[1] == {"from": 100.0, "to": None, "episodes": 0, "success": None}
    row = {"samples": 0, "success_mean": 0.5, "success_se": 0.0, "ms_per_action": 1.0, "s_per_episode": 1.0,
           "flops_per_episode": 0.0, "steps_per_episode": 1.0, "by_distance": buckets}
    table = format_table({"env": "panworld", "tasks": 6, "seeds": 1, "planner": "cem", "samples": 8,
                          "iterations": 1, "date": "today", "device": "cpu", "threads": 1, "rows": {"random": row}})
    assert "[16, 32)" in table and ">= 32" in table and "0.667 (3)" in table


def test_plan_reads_an_fsdp_run(tmp_path, capsys):
    """hjepa plan loads the checkpoint of any engine (runs.load_run_state): here FSDP's
    torch.distributed.checkpoint folder (one rank, in this process)."""
    rollouts = tmp_path / "rollouts"
    assert main(["collect", "--env", "panworld", "--episodes", "2", "--steps", "10", "--out", str(rollouts)]) == 0
    assert main(["train", "--config", "configs/panworld_tiny.yaml", "--no-progress", f"data.root={rollouts}",
                 f"train.out_dir={tmp_path}", "train.run_name=r", "train.engine=fsdp", *SMALL]) == 0
    assert (tmp_path / "r" / "checkpoint" / "meta.pt").is_file() and not (tmp_path / "r" / "checkpoint.pt").exists()
    capsys.readouterr()
    assert main(["plan", "--run", str(tmp_path / "r"), "--env", "panworld", "--tasks", "1", "--samples", "4",
                 "--diagnose"]) == 0
    assert "world-model diagnosis" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tworooms_runs(tmp_path_factory):
    """Two 2-step runs (training seeds 0 and 1) on a few tworooms rollouts."""
    tmp = tmp_path_factory.mktemp("tworooms")
    rollouts = tmp / "rollouts"
    assert main(["collect", "--env", "tworooms", "--episodes", "3", "--steps", "10", "--out", str(rollouts)]) == 0
    for seed in (0, 1):
        assert main(["train", "--config", "configs/panworld_tiny.yaml", "--no-progress", f"data.root={rollouts}",
                     f"train.out_dir={tmp}", f"train.run_name=r{seed}", f"train.seed={seed}", *SMALL]) == 0
    return tmp / "r0", tmp / "r1"


def test_learned_energy_is_fitted_then_used_and_refused_where_it_does_not_fit(tworooms_runs, capsys):
    run, other = tworooms_runs
    plan = ["plan", "--run", str(run), "--env", "tworooms", "--tasks", "1", "--samples", "4"]
    assert main([*plan, "--diagnose", "--energy", "learned"]) == 2
    err = capsys.readouterr().err
    assert "no fitted distance head for tworooms" in err and "--fit-distance" in err
    assert main(["plan", "--run", str(run), "--env", "panworld", "--fit-distance", "--fit-steps", "2"]) == 2
    assert "are of 'tworooms', not 'panworld'" in capsys.readouterr().err

    assert main(["plan", "--run", str(run), "--env", "tworooms", "--fit-distance", "--fit-steps", "2"]) == 0
    assert "level 2:" in capsys.readouterr().out and (run / "distance-tworooms.pt").is_file()
    assert main([*plan, "--diagnose", "--energy", "learned"]) == 0
    assert "learned pred." in capsys.readouterr().out
    assert "learned_corr_true" in json.loads((run / "plan-tworooms" / "diagnose.json").read_text())["levels"][1]
    assert main([*plan, "--seeds", "1", "--iterations", "1", "--levels", "1", "2", "--energy", "learned"]) == 0
    assert "learned energy" in capsys.readouterr().out
    assert json.loads((run / "plan-tworooms" / "plan.json").read_text())["energy"] == "learned"

    shutil.copy(run / "distance-tworooms.pt", run / "distance-panworld.pt")  # renamed for another environment
    assert main(["plan", "--run", str(run), "--env", "panworld", "--diagnose", "--energy", "learned"]) == 2
    assert "was fitted for 'tworooms', not 'panworld'" in capsys.readouterr().err
    shutil.copy(run / "distance-tworooms.pt", other / "distance-tworooms.pt")  # another run's heads
    assert main(["plan", "--run", str(other), "--env", "tworooms", "--diagnose", "--energy", "learned"]) == 2
    assert "fitted on another run or checkpoint" in capsys.readouterr().err
