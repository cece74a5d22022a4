"""A video folder without train/ and val/ subfolders is split by file: deterministic, disjoint, announced;
``hjepa eval`` on it fits its probes on one part and scores them on the other, shows progress and names
the files it wrote."""
from __future__ import annotations

import json

import pytest
from video_files import write_video

from hjepa_fast.cli import main
from hjepa_fast.config import load_config
from hjepa_fast.data import video_folder
from hjepa_fast.eval import probe
from hjepa_fast.train.builders import build_dataset_for

pytest.importorskip("av")

TINY = ["data.dataset=video_folder", "model.in_chans=3", "model.img_size=24",
        "model.encoder_dims=[32,32,32]", "model.encoder_depths=[1,1,1]", "model.encoder_heads=[2,2,2]",
        "model.predictor_dims=[16,16,16]", "model.predictor_depths=[1,1,1]", "model.predictor_heads=[2,2,2]",
        "masks.strategies=[multiblock,multiblock,multiblock]", "masks.num_blocks=2", "masks.min_keep=4",
        "train.steps=2", "train.batch_size=2", "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three classes of two videos each, no split folders."""
    root = tmp_path_factory.mktemp("unsplit")
    for name in ("ants", "bees", "cats"):
        (root / name).mkdir()
        for i in range(2):
            write_video(root / name / f"{i}.mp4", 16, "mpeg4")
    return root


def test_the_split_is_by_file_disjoint_and_deterministic(videos, capsys, monkeypatch):
    monkeypatch.setattr(video_folder, "_NOTED", set())
    cfg = load_config("configs/tiny_cpu.yaml", [*TINY, f"data.root={videos}"])
    train, val = build_dataset_for(cfg, "train"), build_dataset_for(cfg, "val")
    assert set(train.paths).isdisjoint(val.paths) and len(train.paths) + len(val.paths) == 6
    assert len(val.paths) == 2 and train.classes == val.classes == ["ants", "bees", "cats"]
    assert build_dataset_for(cfg, "val").paths == val.paths  # the same files every time
    err = capsys.readouterr().err
    assert err.count("split by file, 2 of 6 videos held out for val") == 1  # announced once


def test_eval_on_an_unsplit_folder_probes_on_other_files(videos, tmp_path, capsys, monkeypatch):
    assert main(["train", "--config", "configs/tiny_cpu.yaml", "--no-progress", *TINY, f"data.root={videos}",
                 f"train.out_dir={tmp_path}", "train.run_name=v"]) == 0
    seen = []
    real = probe.extract_features

    def recording(model, dataset, *args, **kwargs):
        seen.append(list(dataset.paths))
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(probe, "extract_features", recording)
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "v")]) == 0
    captured = capsys.readouterr()
    assert len(seen) == 4  # train and val, for the trained and the initial model
    for fitted, scored in (seen[0:2], seen[2:4]):
        assert set(fitted).isdisjoint(scored), "the probe was scored on clips it was fitted on"
    assert "eval: trained model" in captured.err and "clip" in captured.err  # the progress bars
    assert f"written: {tmp_path / 'v' / 'eval.json'}" in captured.out
    assert set(json.loads((tmp_path / "v" / "eval.json").read_text())["trained"]["all"]) == {"class"}
