"""Run folders have one writer: concurrent starts never mix, a held folder is refused by its holder's name,
failed starts leave nothing, stale temporaries go, and a restarted run has one metrics row per step."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import TINY_CLI

from hjepa_fast.cli import main
from hjepa_fast.runs import RunLock, create_run_dir
from hjepa_fast.train import trainer
from hjepa_fast.train.ema import TargetEMA


def metrics_steps(run_dir) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def metrics_losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_two_concurrent_trainings_into_one_run_name(tmp_path):
    """Two processes, one run name, different seeds: one trains, the other is refused; the folder holds one
    run only (its config, its checkpoint, each of its steps once)."""
    argv = [sys.executable, "-m", "hjepa_fast.cli", "train", "--config", "configs/tiny_cpu.yaml", "--no-progress",
            f"train.out_dir={tmp_path}", "train.run_name=same", "train.steps=3", "train.log_every=1", *TINY_CLI]
    procs = [subprocess.Popen([*argv, f"train.seed={seed}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = 1 + [code for code, _, _ in results].index(0)
    refused = next(err for code, _, err in results if code == 2)
    assert "hjepa: error:" in refused and "same" in refused and "Traceback" not in refused
    run = tmp_path / "same"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == winner
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["train"]["seed"] == winner
    assert metrics_steps(run) == [1, 2, 3]


def test_a_held_folder_is_refused_naming_its_holder(run_copy, capsys):
    lock = RunLock(run_copy)
    lock.acquire()
    try:
        assert main(["train", "--no-progress", "--resume", str(run_copy), "train.steps=3"]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert "in use by another run" in err and f"pid {os.getpid()}" in err
    assert main(["train", "--no-progress", "--resume", str(run_copy), "train.steps=3"]) == 0  # released: free


def test_folder_names_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    made = [create_run_dir(tmp_path, "") for _ in range(3)]
    assert [p.name for p in made] == ["20260101-000000", "20260101-000000-2", "20260101-000000-3"]


def test_a_failed_start_leaves_no_folder(make_config, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("engine failed to start")

    monkeypatch.setattr(trainer, "build_engine", broken)
    with pytest.raises(RuntimeError, match="engine failed"):
        trainer.train(make_config(f"train.out_dir={tmp_path}", "train.run_name=x"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed(run_copy):
    stale = run_copy / ".checkpoint.pt.tmp-99999"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--no-progress", "--resume", str(run_copy), "train.steps=3"]) == 0
    assert not stale.exists()


def test_resume_after_a_crash_before_the_first_checkpoint(make_config, tmp_path, monkeypatch, capsys):
    """Crash at step 3 of 4 with no checkpoint yet: the resumed run starts again at step 0; metrics.csv has
    each step once, and the steps both attempts took have the same losses (a restart, not a continuation)."""
    real_update = TargetEMA.update

    def crash_at_step_3(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_update(self, step)

    monkeypatch.setattr(TargetEMA, "update", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(make_config("train.steps=4", "train.ckpt_every=100", f"train.out_dir={tmp_path}",
                                  "train.run_name=crashed"), progress=False)
    monkeypatch.undo()
    crashed = tmp_path / "crashed"
    assert metrics_steps(crashed) == [1, 2] and not (crashed / "checkpoint.pt").exists()
    first = metrics_losses(crashed)
    assert main(["train", "--no-progress", "--resume", str(crashed)]) == 0
    assert "no checkpoint yet" in capsys.readouterr().err
    assert metrics_steps(crashed) == [1, 2, 3, 4]
    assert metrics_losses(crashed)[:2] == first


def test_resume_overrides_apply_to_the_runs_own_config(run_copy, capsys):
    assert main(["train", "--no-progress", "--resume", str(run_copy), "train.steps=3"]) == 0
    assert "step 3" in capsys.readouterr().out
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["train"]["steps"] == 3
    assert metrics_steps(run_copy) == [2, 3]  # log_every 10: the last step of each attempt
    assert main(["train", "--no-progress", "--resume", str(run_copy), "train.lr=1.0"]) == 2
    err = capsys.readouterr().err
    assert "different config: train.lr (" in err and err.count("->") == 1  # the one change asked for, no other


def test_resuming_a_finished_run_says_so(run_copy, capsys):
    assert main(["train", "--no-progress", "--resume", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "already finished at step 2" in out and "nan" not in out
    assert main(["train", "--no-progress", "--resume", str(run_copy), "train.steps=1"]) == 2
    assert "train.steps=1 is below step 2" in capsys.readouterr().err
