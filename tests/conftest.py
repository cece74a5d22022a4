"""Shared fixtures: a tiny configuration that builds and trains in seconds on a CPU."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

# Without a GPU the Triton kernels run under the interpreter; it must be chosen before triton.jit runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from hjepa_fast.config import Config, load_config

# 16 frames of 24x24 (3x3 patches of 8); level time steps 8, 4, 2
TINY = [
    "model.img_size=24", "model.patch_size=8", "model.encoder_dims=[32,32,32]", "model.encoder_depths=[1,1,1]",
    "model.encoder_heads=[2,2,2]", "model.predictor_dims=[16,16,16]", "model.predictor_depths=[1,1,1]",
    "model.predictor_heads=[2,2,2]", "data.frames=16", "train.batch_size=4", "train.log_every=1",
    "masks.min_keep=4", "train.warmup_steps=2",
]


@pytest.fixture
def make_config():
    """``make_config(*overrides) -> Config``: the tiny config with overrides applied."""

    def make(*overrides: str) -> Config:
        return load_config(None, [*TINY, *overrides])

    return make


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


TINY_CLI = ["model.img_size=24", "model.encoder_dims=[32,32,32]", "model.encoder_depths=[1,1,1]",
            "model.encoder_heads=[2,2,2]", "model.predictor_dims=[16,16,16]", "model.predictor_depths=[1,1,1]",
            "model.predictor_heads=[2,2,2]", "masks.min_keep=4", "train.batch_size=4", "train.warmup_steps=1",
            "eval.train_clips=48", "eval.val_clips=24", "eval.batch_size=24"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-step run of the tiny CLI config (trained once per session; copy it before changing it)."""
    from hjepa_fast.cli import main

    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", f"train.out_dir={out}",
                 "train.run_name=r", "train.steps=2", *TINY_CLI]) == 0
    return out / "r"


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of ``trained_run`` that a test may corrupt."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))
