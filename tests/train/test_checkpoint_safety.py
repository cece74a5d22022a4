"""Opening a checkpoint never runs code from it; a corrupt, truncated or foreign one is refused with one
line naming the file; RNG states survive the safe format; old checkpoints load only on request."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from hjepa_fast.checkpoint import TRUST_ENV, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hjepa_fast.cli import main
from hjepa_fast.errors import CheckpointError


class ShellCommand:
    """Pickles to a call of os.system: what a crafted checkpoint.pt would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hjepa: error: "), err
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("command", [["eval", "--run"], ["train", "--no-progress", "--resume"]])
def test_a_crafted_pickle_is_refused_and_runs_nothing(run_copy, tmp_path, capsys, command):
    marker = tmp_path / "ran"
    torch.save({"model": ShellCommand(f"touch {marker}"), "step": 2}, run_copy / "checkpoint.pt")
    assert main([*command, str(run_copy)]) == 2
    one_error_line(capsys.readouterr().err, str(run_copy / "checkpoint.pt"), "posix.system", "--trust-checkpoint")
    assert not marker.exists()
    # the file really is live: the explicit opt-in runs it (the reason it must be explicit)
    os.environ.pop(TRUST_ENV, None)
    try:
        main(["eval", "--run", str(run_copy), "--trust-checkpoint"])
    except Exception:  # noqa: BLE001 - what the unpickled object does next does not matter here
        pass
    finally:
        os.environ.pop(TRUST_ENV, None)
    assert marker.exists()


@pytest.mark.parametrize("damage,words", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: os.urandom(len(b)), "corrupt or not a PyTorch file"),
    (lambda b: b"", "truncated"),
])
@pytest.mark.parametrize("command", [["eval", "--run"], ["train", "--no-progress", "--resume"]])
def test_truncated_and_random_checkpoints_exit_2_with_one_line(run_copy, capsys, damage, words, command):
    path = run_copy / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    assert main([*command, str(run_copy)]) == 2
    one_error_line(capsys.readouterr().err, str(path), words)


def test_a_foreign_checkpoint_is_refused_by_what_it_lacks(run_copy, capsys):
    torch.save({"weights": torch.zeros(3)}, run_copy / "checkpoint.pt")
    assert main(["eval", "--run", str(run_copy)]) == 2
    one_error_line(capsys.readouterr().err, "is not an hjepa_fast checkpoint", "'model'")


def test_a_checkpoint_of_another_model_is_refused(run_copy, capsys):
    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    state["model"] = {k: v[..., :1] if v.ndim else v for k, v in state["model"].items()}
    torch.save(state, run_copy / "checkpoint.pt")
    for command in (["eval", "--run"], ["train", "--no-progress", "--resume"]):
        assert main([*command, str(run_copy)]) == 2
        one_error_line(capsys.readouterr().err, "does not fit the model of the run's config.yaml")


def test_rng_states_round_trip_through_the_safe_format(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"step": 0, "rng": rng_state()})
    expected = (torch.rand(3), random.random(), np.random.rand(3))
    torch.rand(5), random.random(), np.random.rand(7)  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and np.array_equal(expected[2], again[2])


def test_old_checkpoints_load_only_with_the_opt_in(tmp_path, monkeypatch):
    """Before the safe format, numpy's RNG state was pickled as an array (a global a safe load refuses)."""
    old = {"step": 3, "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "old.pt")
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(CheckpointError, match="older hjepa_fast.*--trust-checkpoint"):
        load_checkpoint(tmp_path / "old.pt")
    monkeypatch.setenv(TRUST_ENV, "1")
    state = load_checkpoint(tmp_path / "old.pt")
    set_rng_state(state["rng"])
    assert np.random.get_state()[2] == old["rng"]["numpy"][2]
