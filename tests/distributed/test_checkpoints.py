"""Checkpoints written by 2 processes (gloo, started by torchrun) are read by every command in one process
(docs/checkpoints.md):

- FSDP2: ``runs.load_run_state`` gives what torch's own consolidation gives; ``hjepa eval`` and
  ``hjepa export`` read the run; a run stopped on 2 FSDP ranks resumes on 2 DDP ranks with the losses of
  the uninterrupted run, and a single-process run resumes on 2 FSDP ranks likewise (in one process:
  tests/train/test_checkpoint_layouts.py);
- DeepSpeed ZeRO-2 and ZeRO-3 (when DeepSpeed is installed): the consolidated state equals DeepSpeed's
  ``get_fp32_state_dict_from_zero_checkpoint`` plus the EMA targets of ``hjepa_meta.pt``; eval and export
  read the run. Run with ``pytest -m distributed``.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from hjepa_fast.checkpoint import load_checkpoint
from hjepa_fast.cli import main
from hjepa_fast.runs import DS_CHECKPOINT, DS_META, checkpoint_layout, load_run_state

pytestmark = pytest.mark.distributed

_spec = importlib.util.spec_from_file_location("engine_tests", Path(__file__).with_name("test_engines.py"))
engine_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_tests)
BASE, ENGINES, STOP, TOL, launch, losses = (engine_tests.BASE, engine_tests.ENGINES, engine_tests.STOP,
                                            engine_tests.TOL, engine_tests.launch, engine_tests.losses)
EVAL = ["--train-clips", "32", "--val-clips", "16", "--no-progress"]


def read_by_every_command(run: Path, tmp_path: Path, capsys) -> dict:
    """``hjepa eval`` and ``hjepa export`` of ``run``; the export equals ``load_run_state``. Returns the state."""
    state = load_run_state(run)
    assert main(["eval", "--run", str(run), *EVAL]) == 0
    assert f"run at step {engine_tests.STEPS}" in capsys.readouterr().out
    assert main(["export", str(run), str(tmp_path / "e.safetensors")]) == 0
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "e.safetensors")
    for i in range(3):
        for kind, prefix in (("encoder", f"encoders.{i}."), ("target_encoder", f"target_encoders.{i}.")):
            ours = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
            theirs = {k[len(f"level{i + 1}.{kind}."):]: v for k, v in exported.items()
                      if k.startswith(f"level{i + 1}.{kind}.")}
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    return state


def test_fsdp_runs_are_read_by_eval_export_and_another_engine(tmp_path, capsys):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    overrides = [*BASE, *ENGINES["fsdp"], f"train.out_dir={tmp_path}"]
    launch(tmp_path, *overrides, "train.run_name=full")
    full = losses(tmp_path / "full")
    state = read_by_every_command(tmp_path / "full", tmp_path, capsys)
    assert state["layout"] == "dcp" and state["step"] == engine_tests.STEPS
    dcp_to_torch_save(tmp_path / "full" / "checkpoint", tmp_path / "reference.pt")  # torch's own reader
    reference = torch.load(tmp_path / "reference.pt", weights_only=False)["model"]
    assert state["model"].keys() == reference.keys()
    assert all(torch.equal(state["model"][k], reference[k]) for k in reference)

    # stopped on 2 FSDP ranks, resumed on 2 DDP ranks (each reads the DCP folder as full tensors)
    launch(tmp_path, *overrides, "train.run_name=stopped", stop=STOP)
    launch(tmp_path, "--resume", str(tmp_path / "stopped"), *BASE, *ENGINES["ddp"], f"train.out_dir={tmp_path}",
           "train.run_name=stopped")
    assert losses(tmp_path / "stopped") == pytest.approx(full, abs=TOL)
    assert checkpoint_layout(tmp_path / "stopped") == "torch"

    # a single-process run stopped at STOP, resumed on 2 FSDP ranks (each reads checkpoint.pt, keeps its shards)
    single = [*BASE, "train.engine=single", f"train.out_dir={tmp_path}", "train.run_name=single"]
    launch(tmp_path, *single, stop=STOP, nproc=1)
    launch(tmp_path, "--resume", str(tmp_path / "single"), *overrides, "train.run_name=single")
    assert losses(tmp_path / "single") == pytest.approx(full, abs=TOL)
    assert checkpoint_layout(tmp_path / "single") == "dcp"


@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_deepspeed_runs_are_read_by_eval_and_export(engine, tmp_path, capsys):
    pytest.importorskip("deepspeed", reason="DeepSpeed not installed: pip install 'hjepa_fast[deepspeed]'")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    launch(tmp_path, *BASE, *ENGINES[engine], f"train.out_dir={tmp_path}", "train.run_name=run")
    run = tmp_path / "run"
    state = read_by_every_command(run, tmp_path, capsys)
    assert state["layout"] == "deepspeed" and state["step"] == engine_tests.STEPS
    meta = load_checkpoint(run / DS_CHECKPOINT / DS_META)
    expected = dict(get_fp32_state_dict_from_zero_checkpoint(str(run / DS_CHECKPOINT), tag=meta["tag"]))
    expected.update({f"target_encoders.{k}": v for k, v in meta["targets"].items()})
    assert state["model"].keys() == expected.keys()
    assert all(torch.equal(state["model"][k], expected[k].float()) for k in expected)
    if engine == "zero2":  # the folder the default suite imitates without DeepSpeed (test_checkpoint_layouts)
        assert (run / DS_CHECKPOINT / meta["tag"] / "mp_rank_00_model_states.pt").is_file()
    shutil.rmtree(run / DS_CHECKPOINT / meta["tag"])
    assert main(["export", str(run), str(tmp_path / "again.safetensors")]) == 2
    assert "is missing" in capsys.readouterr().err
