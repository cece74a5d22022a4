"""Every engine's checkpoint is read by every command (docs/checkpoints.md), in one process:

- an FSDP run (``torch.distributed.checkpoint`` folder; here on 1 rank, 2 ranks in tests/distributed) is
  read by ``runs.load_run_state`` exactly as torch's own consolidation reads it, and by eval and export;
- ``--resume`` under another engine (single <-> fsdp) has exactly the losses of an uninterrupted run;
- a DeepSpeed ZeRO-2 folder is read without DeepSpeed; ZeRO-3 without DeepSpeed is refused in one line;
- crafted DCP files (metadata, non-tensor entries, a data file outside the folder) are refused and run
  nothing, under eval and resume.
"""
from __future__ import annotations

import itertools
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

from hjepa_fast.builders import build_model
from hjepa_fast.checkpoint import TRUST_ENV, dcp_load, load_deepspeed_model, save_checkpoint
from hjepa_fast.cli import main
from hjepa_fast.config import load_config
from hjepa_fast.errors import CheckpointError
from hjepa_fast.runs import DS_CHECKPOINT, DS_META, checkpoint_layout, load_run_state
from hjepa_fast.train import trainer

STEPS, STOP = 6, 3
RUN = [*TINY, f"train.steps={STEPS}", "train.lr=4e-2", "train.threads=1", "train.ckpt_every=100",
       "train.ema_tau_base=[0.5,0.5,0.5]", "train.ema_tau_end=[0.5,0.5,0.5]", "eval.train_clips=32",
       "eval.val_clips=16", "eval.batch_size=16"]


def run(out: Path, name: str, engine: str, stop: int = 0, resume: bool = False) -> list[float]:
    """Train ``out/name`` with ``engine`` (stopping cleanly after step ``stop``, or resuming); its losses."""
    real = trainer.distributed.build_sharded_loader
    if stop:
        trainer.distributed.build_sharded_loader = (
            lambda cfg, info, start_step=0: itertools.islice(real(cfg, info, start_step=start_step), stop - start_step))
    try:
        cfg = load_config(None, [*RUN, f"train.engine={engine}", f"train.out_dir={out}", f"train.run_name={name}"])
        if resume:
            cfg = trainer.resume_config(out / name, cfg)
        result = trainer.train(cfg, run_dir=out / name if resume else None, resume=resume, progress=False)
    finally:
        trainer.distributed.build_sharded_loader = real
    return [row["loss"] for row in result["losses"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("layouts")
    full = run(out, "single", "single")
    run(out, "fsdp", "fsdp")
    return {"out": out, "full": full}


def test_an_fsdp_folder_reads_as_torch_consolidates_it(runs, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    fsdp = runs["out"] / "fsdp"
    assert checkpoint_layout(fsdp) == "dcp"
    state = load_run_state(fsdp)
    assert state["layout"] == "dcp" and state["step"] == STEPS and state["path"] == fsdp / "checkpoint"
    dcp_to_torch_save(fsdp / "checkpoint", tmp_path / "reference.pt")  # torch's own reader (unsafe load)
    reference = torch.load(tmp_path / "reference.pt", weights_only=False)["model"]
    assert state["model"].keys() == reference.keys()
    assert all(torch.equal(state["model"][k], reference[k]) for k in reference)
    # the same keys as the model, EMA targets included: a strict load
    cfg = load_config(None, [*RUN])
    build_model(cfg).load_state_dict(state["model"], strict=True)
    # on 1 rank FSDP trains exactly like one process: the same weights as the single run
    single = load_run_state(runs["out"] / "single")
    assert single["layout"] == "torch"
    torch.testing.assert_close(state["model"], single["model"], atol=1e-6, rtol=0)


def test_eval_and_export_read_an_fsdp_run(runs, tmp_path, capsys):
    fsdp = runs["out"] / "fsdp"
    assert main(["eval", "--run", str(fsdp), "--no-progress"]) == 0
    assert "run at step 6" in capsys.readouterr().out
    assert main(["export", str(fsdp), str(tmp_path / "e.safetensors")]) == 0
    from safetensors.torch import load_file

    tensors, model = load_file(tmp_path / "e.safetensors"), load_run_state(fsdp)["model"]
    assert torch.equal(tensors["level2.target_encoder.norm.weight"], model["target_encoders.1.norm.weight"])


@pytest.mark.parametrize("first,then", [("fsdp", "single"), ("single", "fsdp")])
def test_resume_under_another_engine_is_exact(runs, tmp_path, first, then):
    stopped = run(tmp_path, "run", first, stop=STOP)
    resumed = run(tmp_path, "run", then, resume=True)
    assert stopped + resumed == pytest.approx(runs["full"], abs=1e-6)
    assert checkpoint_layout(tmp_path / "run") == {"single": "torch", "fsdp": "dcp"}[then]  # the newer one


# -- DeepSpeed folders, without DeepSpeed --------------------------------------------------------------------

def deepspeed_folder(run_dir: Path, stage: int) -> dict:
    """A DeepSpeed checkpoint folder as DeepSpeed 0.19 writes it (checked against the real one in
    tests/distributed/test_checkpoints.py): the module state (online parts) in the model-states file,
    the EMA targets in hjepa_meta.pt."""
    state = load_run_state(run_dir)["model"]
    online = {k: v for k, v in state.items() if not k.startswith("target_encoders.")}
    targets = {k[len("target_encoders."):]: v for k, v in state.items() if k.startswith("target_encoders.")}
    (run_dir / "checkpoint.pt").unlink()
    folder = run_dir / DS_CHECKPOINT / "step6"
    folder.mkdir(parents=True)
    torch.save({"module": online if stage < 3 else {}, "ds_version": "0.19.8", "global_steps": 6},
               folder / ("mp_rank_00_model_states.pt" if stage < 3 else "zero_pp_rank_0_mp_rank_00_model_states.pt"))
    save_checkpoint(run_dir / DS_CHECKPOINT / DS_META, {"step": 6, "rng": [], "tag": "step6", "world_size": 1,
                                                        "zero_stage": stage, "targets": targets})
    return state


def test_a_zero2_folder_reads_without_deepspeed(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as if not installed
    run_dir = Path(shutil.copytree(runs["out"] / "single", tmp_path / "ds"))
    expected = deepspeed_folder(run_dir, stage=2)
    state = load_run_state(run_dir)
    assert state["layout"] == "deepspeed" and state["step"] == 6
    assert state["model"].keys() == expected.keys()
    assert all(torch.equal(state["model"][k], expected[k]) for k in expected)


def test_a_zero3_folder_without_deepspeed_is_refused_in_one_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    run_dir = Path(shutil.copytree(runs["out"] / "single", tmp_path / "ds"))
    deepspeed_folder(run_dir, stage=3)
    assert main(["export", str(run_dir), str(tmp_path / "e.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ZeRO-3 checkpoint" in err[0] and "pip install deepspeed" in err[0], err


def test_a_deepspeed_run_resumes_under_deepspeed_only(runs, tmp_path, capsys):
    run_dir = Path(shutil.copytree(runs["out"] / "single", tmp_path / "ds"))
    deepspeed_folder(run_dir, stage=2)
    with pytest.raises(CheckpointError, match="is missing"):
        load_deepspeed_model(run_dir / DS_CHECKPOINT, "step9", 2)
    assert main(["train", "--no-progress", "--resume", str(run_dir)]) == 2  # config.yaml says single
    err = capsys.readouterr().err
    assert "holds a DeepSpeed checkpoint" in err and "only train.engine=deepspeed resumes it" in err


# -- crafted DCP files -----------------------------------------------------------------------------------------

class ShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("command", [["eval", "--run"], ["export"], ["train", "--no-progress", "--resume"]])
def test_a_crafted_dcp_metadata_file_is_refused_and_runs_nothing(runs, tmp_path, capsys, command, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    run_dir = Path(shutil.copytree(runs["out"] / "fsdp", tmp_path / "run"))
    marker = tmp_path / "ran"
    with open(run_dir / "checkpoint" / ".metadata", "wb") as f:
        pickle.dump(ShellCommand(f"touch {marker}"), f)
    argv = [*command, str(run_dir)] + ([str(tmp_path / "e.safetensors")] if command == ["export"] else [])
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hjepa: error: cannot load checkpoint"), lines
    assert str(run_dir / "checkpoint" / ".metadata") in lines[0] and "posix.system" in lines[0], lines[0]
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_crafted_non_tensor_entry_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    """DCP stores non-tensor values (optimiser hyper-parameters) as pickles that its own planner loads with
    weights_only=False; ours loads them safely first."""
    import torch.distributed.checkpoint as dcp

    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "ran"
    dcp.save({"lr": ShellCommand(f"touch {marker}"), "w": torch.ones(2)}, checkpoint_id=str(tmp_path / "c"),
             no_dist=True)
    with pytest.raises(CheckpointError, match="cannot load checkpoint entry lr.*posix.system"):
        dcp_load({"lr": None, "w": torch.zeros(2)}, tmp_path / "c", no_dist=True)
    assert not marker.exists()
    state = {"w": torch.zeros(2)}
    dcp_load(state, tmp_path / "c", no_dist=True)  # the tensors alone load
    assert torch.equal(state["w"], torch.ones(2))


def test_dcp_metadata_naming_a_file_outside_its_folder_is_refused(runs, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    run_dir = Path(shutil.copytree(runs["out"] / "fsdp", tmp_path / "run"))
    metadata = FileSystemReader(str(run_dir / "checkpoint")).read_metadata()
    for info in metadata.storage_data.values():
        info.relative_path = "../../secrets.distcp"
    with open(run_dir / "checkpoint" / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(CheckpointError, match="names a data file outside its folder"):
        load_run_state(run_dir)
