"""Training end to end on the embedded data: the loss falls, nothing collapses, EMA ends are exact,
checkpoints are atomic, and a crashed run resumes with exactly the losses of an uninterrupted one."""
from __future__ import annotations

import csv

import pytest
import torch

from hjepa_fast.checkpoint import load_checkpoint, save_checkpoint
from hjepa_fast.train.builders import build_dataset_for, build_model
from hjepa_fast.train.ema import TargetEMA
from hjepa_fast.train.trainer import train


def run(cfg, tmp_path, name, **kw):
    run_dir = tmp_path / name
    run_dir.mkdir()
    return train(cfg, run_dir=run_dir, progress=False, **kw)


def token_spread(model, clips) -> list[float]:
    """Per level: std over clips and tokens of the L2-normalised target features, averaged over dims."""
    feats = model.encode_targets(clips)
    return [torch.nn.functional.normalize(f.flatten(0, 1), dim=-1).std(0).mean().item() for f in feats]


def test_short_run_lowers_the_loss_and_does_not_collapse(make_config, tmp_path):
    cfg = make_config("train.steps=40", "train.batch_size=8", "train.lr=4e-3", "train.log_every=5")
    result = run(cfg, tmp_path, "run")
    losses = [row["loss"] for row in result["losses"]]
    assert losses[-1] < 0.8 * losses[0], losses
    dataset = build_dataset_for(cfg, "val")
    clips = torch.stack([dataset[(i, 0)]["clip"] for i in range(32)])
    trained = build_model(cfg)
    trained.load_state_dict(load_checkpoint(result["run_dir"] / "checkpoint.pt")["model"])
    # the floor: training may not remove more than half of the spread the random encoder has
    for level, (after, before) in enumerate(zip(token_spread(trained, clips), token_spread(build_model(cfg), clips))):
        assert after > 0.5 * before, f"level {level + 1} collapsed: spread {after:.4f} vs {before:.4f} at init"
    assert (result["run_dir"] / "metrics.csv").is_file() and (result["run_dir"] / "config.yaml").is_file()
    assert (result["run_dir"] / "loss.png").is_file()


def test_crashed_run_resumes_with_the_same_losses(make_config, tmp_path, monkeypatch):
    cfg = make_config("train.steps=8", "train.ckpt_every=4", "model.drop_path=0.1")
    full = [row["loss"] for row in run(cfg, tmp_path, "full")["losses"]]

    real_update = TargetEMA.update

    def crash_at_step_6(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return real_update(self, step)

    monkeypatch.setattr(TargetEMA, "update", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path, "crashed")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 4
    resumed = train(cfg, run_dir=tmp_path / "crashed", resume=True, progress=False)
    assert [row["loss"] for row in resumed["losses"]] == full[4:]
    with open(tmp_path / "crashed" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # rows 5-6 of the crashed attempt replaced
    assert [float(r["loss"]) for r in rows] == pytest.approx(full, abs=0)


def test_a_logged_row_averages_the_steps_of_its_window(make_config, tmp_path):
    # the same seed logged every step and every third step: a row is the mean of its window's step losses
    every = run(make_config("train.steps=6", "train.log_every=1"), tmp_path, "every")["losses"]
    third = run(make_config("train.steps=6", "train.log_every=3"), tmp_path, "third")["losses"]
    assert [row["step"] for row in third] == [3, 6]
    for row, window in zip(third, (every[:3], every[3:])):
        for key in ("loss", "loss_l1", "loss_l3"):
            assert row[key] == pytest.approx(sum(r[key] for r in window) / 3, rel=1e-5), key


@pytest.mark.parametrize("tau,expect", [(1.0, "unchanged"), (0.0, "online")])
def test_training_with_tau_one_keeps_and_tau_zero_copies_the_targets(make_config, tmp_path, tau, expect):
    cfg = make_config("train.steps=2", f"train.ema_tau_base=[{tau},{tau},{tau}]",
                      f"train.ema_tau_end=[{tau},{tau},{tau}]")
    result = run(cfg, tmp_path, "run")
    state = load_checkpoint(result["run_dir"] / "checkpoint.pt")["model"]
    init = build_model(cfg).state_dict()
    for key, value in state.items():
        if key.startswith("target_encoders."):
            online = state[key.replace("target_encoders.", "encoders.", 1)]
            assert not torch.equal(online, init[key.replace("target_encoders.", "encoders.", 1)]) or online.ndim < 2
            assert torch.equal(value, init[key] if expect == "unchanged" else online), key


def test_ema_schedule_is_per_level_cosine():
    ema = TargetEMA([[]] * 2, [[]] * 2, tau_base=[0.9, 0.99], tau_end=[1.0, 0.999], total_steps=10)
    assert ema.taus(0) == pytest.approx([0.9, 0.99])
    assert ema.taus(5) == pytest.approx([0.95, 0.9945])
    assert ema.taus(10) == pytest.approx([1.0, 0.999])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
