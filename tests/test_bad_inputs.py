"""Every ordinary mistake a user can make is refused with exit status 2 and one line that names it: a table
of bad inputs (command, expected exit status, expected words), driven through the ``hjepa`` command."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing

import pytest

from hjepa_fast.cli import main
from hjepa_fast.config import PAIRS, RANGES, Config

TRAIN = ["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", "train.steps=2", "train.out_dir={tmp}/runs"]
VIDEO = [*TRAIN, "data.dataset=video_folder", "model.in_chans=3"]

BAD_INPUTS = [
    # numeric settings, refused at load time by key
    ([*TRAIN, "model.patch_size=0"], 2, ["'model.patch_size' must be >= 1, got 0"]),
    ([*TRAIN, "model.tubelet=0"], 2, ["'model.tubelet' must be >= 1"]),
    ([*TRAIN, "data.frames=0"], 2, ["'data.frames' must be >= 1"]),
    ([*TRAIN, "model.encoder_heads=[4,0,4]"], 2, ["'model.encoder_heads[1]' must be >= 1"]),
    ([*TRAIN, "model.predictor_heads=[0,4,4]"], 2, ["'model.predictor_heads[0]' must be >= 1"]),
    ([*TRAIN, "model.encoder_dims=[64,-64,64]"], 2, ["'model.encoder_dims[1]'"]),
    ([*TRAIN, "train.log_every=0"], 2, ["'train.log_every' must be >= 1"]),
    ([*TRAIN, "train.ckpt_every=0"], 2, ["'train.ckpt_every' must be >= 1"]),
    ([*TRAIN, "train.lr=-1"], 2, ["'train.lr' must be >= 0, got -1.0"]),
    ([*TRAIN, "train.lr=.nan"], 2, ["'train.lr'", "nan"]),
    ([*TRAIN, "train.warmup_steps=-5"], 2, ["'train.warmup_steps'"]),
    ([*TRAIN, "train.batch_size=0"], 2, ["'train.batch_size' must be >= 1"]),
    ([*TRAIN, "data.num_workers=-1"], 2, ["'data.num_workers' must be >= 0, got -1"]),
    ([*TRAIN, "model.drop_path=1.5"], 2, ["'model.drop_path' must be in [0, 1)"]),
    ([*TRAIN, "masks.target_scale=[0.3,0.2]"], 2, ["'masks.target_scale' must be [low, high]"]),
    ([*TRAIN, "masks.context_fraction=[0.5]"], 2, ["'masks.context_fraction' must be [low, high]"]),
    ([*TRAIN, "masks.horizon=9"], 2, ["masks.* for level 1", "horizon"]),
    ([*TRAIN, "eval.context_fraction=1.0"], 2, ["'eval.context_fraction' must be in (0, 1)"]),
    ([*TRAIN, "model.levels=0"], 2, ["model.levels must be >= 1"]),
    ([*TRAIN, "train.batch_sise=4"], 2, ["unknown config key 'train.batch_sise'", "train.batch_size"]),
    ([*TRAIN, "model.levels=two"], 2, ["'model.levels' must be int"]),
    # files and folders
    (["train", "--config", "{tmp}/missing.yaml"], 2, ["config file not found"]),
    (["train", "--resume", "{tmp}/no/run"], 2, ["is not a run folder"]),
    (["eval", "--run", "{tmp}/no/run"], 2, ["is not a run folder"]),
    ([*VIDEO, "data.root={tmp}/no_videos"], 2, ["video folder not found"]),
    ([*VIDEO, "data.root={tmp}/empty"], 2, ["no videos under", "empty"]),
    ([*VIDEO, "data.root={tmp}/one_video"], 2, ["holds 1 video: splitting it by file needs at least 2"]),
    ([*VIDEO, "data.root={tmp}/corrupt"], 2, ["no video under", "decodes", "broken.mp4"]),
    ([*VIDEO, "data.root={tmp}/corrupt", "data.num_workers=1"], 2, ["no video under", "decodes", "broken.mp4"]),
    # checkpoints (a copy of a finished 2-step run)
    (["eval", "--run", "{run}", "--truncate"], 2, ["{run}/checkpoint.pt", "truncated"]),
    (["train", "--no-progress", "--resume", "{run}", "--truncate"], 2, ["{run}/checkpoint.pt", "truncated"]),
    (["eval", "--run", "{run}", "--random-bytes"], 2, ["{run}/checkpoint.pt", "corrupt"]),
    (["train", "--no-progress", "--resume", "{run}", "--random-bytes"], 2, ["{run}/checkpoint.pt", "corrupt"]),
    # checkpoint layouts and hjepa export (docs/checkpoints.md)
    (["eval", "--run", "{tmp}/bare"], 2, ["{tmp}/bare has no checkpoint", "checkpoint.pt", "checkpoint/meta.pt"]),
    (["export", "{tmp}/bare", "{tmp}/e.safetensors"], 2, ["{tmp}/bare has no checkpoint"]),
    (["export", "{tmp}/partial", "{tmp}/e.safetensors"], 2, ["{tmp}/partial/checkpoint is not a checkpoint",
                                                              "lacks meta.pt"]),
    (["export", "{tmp}/no/run", "{tmp}/e.safetensors"], 2, ["is not a run folder"]),
    (["export", "{run}", "{tmp}/exists.safetensors"], 2, ["{tmp}/exists.safetensors already exists", "--force"]),
    (["export", "{run}", "{tmp}"], 2, ["is a folder"]),
    # resume and eval settings
    (["train", "--no-progress", "--resume", "{run}", "train.steps=1"], 2, ["train.steps=1 is below step 2"]),
    (["train", "--no-progress", "--resume", "{run}", "model.levels=2"], 2, ["cannot resume", "model.levels"]),
    (["eval", "--run", "{run}", "--train-clips", "0"], 2, ["'eval.train_clips' must be >= 1"]),
    (["eval", "--run", "{run}", "--context-fraction", "1.5"], 2, ["'eval.context_fraction' must be in (0, 1)"]),
    (["eval", "--run", "{run}", "--labels", "colour"], 2, ["label 'colour' is not a label"]),
]


@pytest.fixture
def places(tmp_path, run_copy) -> dict[str, str]:
    """The folders the table names: video folders (empty, corrupt videos only, one video), a run to damage."""
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    for name in ("cat", "dog"):
        (tmp_path / "corrupt" / name).mkdir(parents=True)
        (tmp_path / "corrupt" / name / "broken.mp4").write_bytes(os.urandom(2000))
    (tmp_path / "one_video").mkdir()
    (tmp_path / "one_video" / "a.mp4").write_bytes(os.urandom(2000))
    for name in ("bare", "partial"):  # run folders without a checkpoint; with an FSDP folder lacking meta.pt
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_bytes((run_copy / "config.yaml").read_bytes())
    (tmp_path / "partial" / "checkpoint").mkdir()
    (tmp_path / "exists.safetensors").write_bytes(b"")
    return {"tmp": str(tmp_path), "run": str(run_copy)}


@pytest.mark.parametrize("argv,status,words", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_exits_with_one_line(argv, status, words, places, capsys):
    argv = [a.format(**places) for a in argv]
    checkpoint = os.path.join(places["run"], "checkpoint.pt")
    if "--truncate" in argv or "--random-bytes" in argv:
        data = open(checkpoint, "rb").read()
        damaged = data[: len(data) // 2] if "--truncate" in argv else os.urandom(len(data))
        open(checkpoint, "wb").write(damaged)
        argv = [a for a in argv if a not in ("--truncate", "--random-bytes")]
    assert main(argv) == status
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("hjepa: error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    assert all(w.format(**places) in errors[0] for w in words), errors[0]
    assert not os.path.exists(os.path.join(places["tmp"], "runs")) or not os.listdir(
        os.path.join(places["tmp"], "runs")), "a failed start left a run folder behind"


def test_the_command_itself_prints_one_line_and_exits_2(tmp_path):
    """The installed entry point, not only ``main``: no traceback reaches the terminal."""
    done = subprocess.run([sys.executable, "-m", "hjepa_fast.cli", "train", "--config", "configs/tiny_cpu.yaml",
                           "train.ckpt_every=0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["hjepa: error: config key 'train.ckpt_every' must be >= 1, got 0"]


def test_every_numeric_setting_has_a_range():
    """A new int or float setting needs an entry in config.RANGES (its range, checked at load time)."""
    checked_elsewhere = {"model.levels", "train.ema_tau_base", "train.ema_tau_end"}
    numeric, cfg = set(), Config()
    for section in dataclasses.fields(cfg):
        for name, hint in typing.get_type_hints(type(getattr(cfg, section.name))).items():
            if hint in (int, float) or typing.get_args(hint) in ((int,), (float,)):
                numeric.add(f"{section.name}.{name}")
    assert {"train.lr", "model.encoder_heads", "masks.target_scale"} <= numeric  # the scan sees ints, floats, lists
    missing = sorted(numeric - set(RANGES) - checked_elsewhere)
    assert not missing, f"add these to config.RANGES: {missing}"
    assert set(PAIRS) <= set(RANGES)
