"""Every engine on 2 CPU processes (gloo), started by torchrun as a user would:

- at the same global batch and seed, the losses of the first steps match the single-process run
  (tolerance: 1e-5 absolute on losses ~2; only the order of the gradient reduction differs);
- a run stopped at step 3 and resumed under 2 processes has exactly the losses of an uninterrupted
  2-process run; FSDP also resumes on 1 process (torch.distributed.checkpoint reshards), DeepSpeed refuses
  another world size with the universal-checkpoint recipe.

EMA momentum 0.5 and a high learning rate make the targets move fast: an EMA that ran on the wrong
tensors, or more than once per step, would show in the losses at once. Run with ``pytest -m distributed``.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hjepa_fast.config import ConfigError, load_config
from hjepa_fast.train.distributed import free_port
from hjepa_fast.train.trainer import resume_config, train

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
STEPS, STOP = 6, 3
TOL = 1e-5
BASE = [
    "model.img_size=24", "model.patch_size=8", "model.encoder_dims=[32,32,32]", "model.encoder_depths=[1,1,1]",
    "model.encoder_heads=[2,2,2]", "model.predictor_dims=[16,16,16]", "model.predictor_depths=[1,1,1]",
    "model.predictor_heads=[2,2,2]", "data.frames=16", "train.batch_size=4", "train.log_every=1",
    "masks.min_keep=4", "train.warmup_steps=2", f"train.steps={STEPS}", "train.lr=4e-2", "train.threads=1",
    "train.ema_tau_base=[0.5,0.5,0.5]", "train.ema_tau_end=[0.5,0.5,0.5]", "train.ckpt_every=100",
]
ENGINES = {
    "ddp": ["train.engine=ddp"],
    "fsdp": ["train.engine=fsdp"],
    "zero2": ["train.engine=deepspeed", f"train.deepspeed={ROOT / 'configs/ds_zero2.json'}"],
    "zero3": ["train.engine=deepspeed", f"train.deepspeed={ROOT / 'configs/ds_zero3.json'}"],
}


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def launch(tmp_path: Path, *args: str, stop: int = 0, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", str(WORKER), str(stop), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def single_losses(tmp_path_factory) -> list[float]:
    out = tmp_path_factory.mktemp("single")
    cfg = load_config(None, [*BASE, f"train.out_dir={out}", "train.run_name=single"])
    return [row["loss"] for row in train(cfg, progress=False)["losses"]]


@pytest.mark.parametrize("engine", list(ENGINES))
def test_two_processes_match_one_and_resume_exactly(engine, single_losses, tmp_path):
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed", reason="DeepSpeed not installed: pip install 'hjepa_fast[deepspeed]'")
    overrides = [*BASE, *ENGINES[engine], f"train.out_dir={tmp_path}"]
    launch(tmp_path, *overrides, "train.run_name=full")
    full = losses(tmp_path / "full")
    assert full == pytest.approx(single_losses, abs=TOL), (full, single_losses)
    assert full[-1] != pytest.approx(full[0], abs=1e-3)  # the run moved: the comparison means something

    launch(tmp_path, *overrides, "train.run_name=stopped", stop=STOP)
    assert losses(tmp_path / "stopped") == full[:STOP]
    shutil.copytree(tmp_path / "stopped", tmp_path / "to_one")
    launch(tmp_path, "--resume", str(tmp_path / "stopped"), *overrides, "train.run_name=stopped")
    assert losses(tmp_path / "stopped") == full  # rows 1-3 of the first attempt, 4-6 resumed: exact

    if engine == "fsdp":  # another world size: saved on 2 ranks, resumed on 1 (in this process)
        cfg = resume_config(tmp_path / "to_one", load_config(None, [*overrides, "train.run_name=to_one"]))
        train(cfg, run_dir=tmp_path / "to_one", resume=True, progress=False)
        assert losses(tmp_path / "to_one") == pytest.approx(full, abs=TOL)
    if engine == "zero2":  # DeepSpeed needs a universal checkpoint for another world size: it says so
        cfg = resume_config(tmp_path / "to_one", load_config(None, overrides))
        with pytest.raises(ConfigError, match="ds_to_universal"):
            train(cfg, run_dir=tmp_path / "to_one", resume=True, progress=False)


ANTI_COLLAPSE = ["loss.variance_weight=[1,1,1]", "loss.covariance_weight=[0.1,0.1,0.1]",
                 "loss.sigreg_weight=[1,1,1]", "loss.sigreg_slices=16"]


def test_anti_collapse_terms_read_the_global_batch(tmp_path):
    """The terms are non-linear in the batch statistics: on 2 ranks they match one process at the same
    global batch only if the statistics are all-reduced (local ones give other losses and gradients)."""
    cfg = load_config(None, [*BASE, *ANTI_COLLAPSE, f"train.out_dir={tmp_path}", "train.run_name=single"])
    single = [row["loss"] for row in train(cfg, progress=False)["losses"]]
    launch(tmp_path, *BASE, *ANTI_COLLAPSE, *ENGINES["ddp"], f"train.out_dir={tmp_path}", "train.run_name=two")
    assert losses(tmp_path / "two") == pytest.approx(single, abs=TOL)
