"""The hjepa command as a user runs it: train, resume, eval, info, and clear errors."""
from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

from hjepa_fast import cli
from hjepa_fast.cli import main

FAST = ["model.encoder_depths=[1,1,1]", "model.predictor_depths=[1,1,1]", "train.batch_size=8",
        "train.log_every=2", "eval.train_clips=64", "eval.val_clips=32", "eval.batch_size=32"]


def test_train_resume_and_eval(tmp_path, capsys):
    args = ["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", f"train.out_dir={tmp_path}",
            "train.run_name=r", "train.steps=4", *FAST]
    assert main(args) == 0
    run = tmp_path / "r"
    assert {"config.yaml", "metrics.csv", "checkpoint.pt", "loss.png"} <= {p.name for p in run.iterdir()}
    # a second start into the same folder would overwrite work: refused
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    # resume with more steps continues from step 4
    assert main(["train", "--config", "configs/tiny_cpu.yaml", "--resume", str(run), "--no-progress",
                 f"train.out_dir={tmp_path}", "train.run_name=r", "train.steps=6", *FAST]) == 0
    assert "step 6" in capsys.readouterr().out
    # resuming with a setting that changes the numbers is refused by name
    assert main(["train", "--config", "configs/tiny_cpu.yaml", "--resume", str(run), "train.lr=1.0",
                 f"train.out_dir={tmp_path}", "train.run_name=r", *FAST]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["eval", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "digit trained" in out and "level3" in out and "all" in out
    result = json.loads((run / "eval.json").read_text())
    assert set(result["trained"]) == {"level1", "level2", "level3", "all"}
    assert all(0.0 <= acc <= 1.0 for accs in result["random"].values() for acc in accs.values())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--config", "configs/tiny_cpu.yaml", "train.batch_sise=4"], "unknown config key 'train.batch_sise'"),
        (["train", "--config", "configs/tiny_cpu.yaml", "model.levels=two"], "'model.levels' must be int"),
        (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["train", "--resume", "no/such/run"], "no/such/run is not a run folder"),
        (["eval", "--run", "no/such/run"], "no/such/run is not a run folder"),
        (["train"], "give --config FILE"),
    ],
)
def test_user_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_info_names_versions_device_and_optional_packages(capsys):
    import triton

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"triton {triton.__version__}" in out and "attention backend" in out
    optional = next(line for line in out.splitlines() if line.startswith("optional: "))
    assert all(f"{name} " in optional for name in ("flash-attn", "xformers", "deepspeed", "tensorboard", "av"))
    assert ("not available" in out) != torch.cuda.is_available()


def test_bench_only_help_names_every_benchmark():
    """The ``hjepa bench --only`` help lists the names ``benchmarks.run`` accepts (written out: the installed
    package cannot import ``benchmarks``)."""
    from benchmarks.run import BENCHMARKS

    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    only = next(a for a in subcommands.choices["bench"]._actions if a.dest == "only")
    assert sorted(name.strip() for name in only.help.split(",")) == sorted(BENCHMARKS)


def test_bench_outside_a_checkout_says_where_to_run_it(monkeypatch, tmp_path, capsys):
    """``benchmarks/`` is not installed with the package: where it cannot be imported, ``hjepa bench`` exits
    with one line saying how to reach it (and runs nothing)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # as if no checkout were on the import path
    monkeypatch.setitem(sys.modules, "benchmarks.run", None)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command adds the current directory to a copy
    assert main(["bench", "--quick"]) == 2
    assert capsys.readouterr().err.strip() == f"hjepa: error: {cli.BENCHMARKS_MISSING}"


def test_bench_from_the_checkout_runs_the_benchmarks(monkeypatch):
    """From the checkout's root ``hjepa bench`` imports ``benchmarks.run`` and hands it the flags."""
    import benchmarks.run

    seen = []
    monkeypatch.setattr(benchmarks.run, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--quick", "--only", "ema"]) == 0
    assert seen == [["--quick", "--only", "ema"]]
