"""``hjepa export RUN OUT``: one framework-free file of every level's encoders that plain code loads with a
strict ``load_state_dict`` and that computes what the run's model computes; the docs' timm recipe runs and
matches; OUT is written atomically and an existing one is replaced only with --force."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hjepa_fast.builders import build_model
from hjepa_fast.checkpoint import load_model_state
from hjepa_fast.cli import main
from hjepa_fast.config import config_from_dict, to_dict
from hjepa_fast.export import FORMAT, encoder_tensors
from hjepa_fast.model.hjepa import normalize_clips
from hjepa_fast.model.posembed import sincos_3d
from hjepa_fast.runs import load_run

DOC = Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md"


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "encoders.safetensors"
    assert main(["export", str(trained_run), str(out)]) == 0
    return out


def run_model(run: Path):
    cfg, state = load_run(run)
    model = build_model(cfg)
    load_model_state(model, state, state["path"])
    return model.eval(), cfg


def bottom_up(encoders, clips: torch.Tensor, grids) -> list[torch.Tensor]:
    """Every level's encoding of the full clip through ``encoders`` (as ``HJEPA.encode_targets`` does)."""
    x, out = normalize_clips(clips), []
    for level, encoder in enumerate(encoders):
        if level > 0:
            T, side, _ = grids[level - 1]
            x = out[-1].view(out[-1].shape[0], T, side * side, -1)
        out.append(encoder(x))
    return out


def test_export_holds_every_level_and_loads_strictly_into_rebuilt_encoders(trained_run, exported):
    model, cfg = run_model(trained_run)
    tensors = load_file(exported)
    with safe_open(str(exported), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and int(meta["levels"]) == model.levels and meta["step"] == "2"
    assert json.loads(meta["config"]) == json.loads(json.dumps(to_dict(cfg)))
    # nothing but the documented keys
    pattern = re.compile(r"level(\d+)\.(encoder|target_encoder)\.(.+)|level(\d+)\.pos_embed")
    assert all(pattern.fullmatch(k) for k in tensors), [k for k in tensors if not pattern.fullmatch(k)]

    # plain code: the config from the file's metadata, a fresh model, a strict load per level and kind
    fresh = build_model(config_from_dict(json.loads(meta["config"]))).eval()
    for i in range(1, model.levels + 1):
        assert json.loads(meta[f"level{i}.grid"]) == list(model.grids[i - 1])
        assert torch.equal(tensors[f"level{i}.pos_embed"], sincos_3d(model.grids[i - 1], int(meta[f"level{i}.dim"])))
        for kind, modules in (("encoder", fresh.encoders), ("target_encoder", fresh.target_encoders)):
            prefix = f"level{i}.{kind}."
            modules[i - 1].load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                           strict=True)
    clips = torch.randint(0, 256, (2, cfg.data.frames, cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size),
                          dtype=torch.uint8)
    with torch.no_grad():
        for ours, theirs in ((fresh.encoders, model.encoders), (fresh.target_encoders, model.target_encoders)):
            for a, b in zip(bottom_up(ours, clips, model.grids), bottom_up(theirs, clips, model.grids)):
                assert torch.equal(a, b)
        # the online and target encoders differ (the export did not write one twice)
        assert not torch.equal(bottom_up(fresh.encoders, clips, model.grids)[0],
                               bottom_up(fresh.target_encoders, clips, model.grids)[0])


def test_the_docs_timm_recipe_runs(trained_run, exported, tmp_path, monkeypatch):
    """docs/checkpoints.md's python block maps level 1 to a timm VisionTransformer (strict load); its
    features equal the run's level-1 target encoder."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    (tmp_path / "encoders.safetensors").write_bytes(exported.read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    model, _ = run_model(trained_run)
    with torch.no_grad():
        expected = model.target_encoders[0](namespace["clips"])
    assert namespace["features"].shape == expected.shape
    torch.testing.assert_close(namespace["features"], expected, atol=1e-5, rtol=1e-5)


def test_pt_format_loads_with_weights_only(trained_run, exported, tmp_path):
    out = tmp_path / "encoders.pt"
    assert main(["export", str(trained_run), str(out), "--format", "pt"]) == 0
    saved = torch.load(out, weights_only=True)
    reference = load_file(exported)
    assert saved["metadata"]["format"] == FORMAT and saved["tensors"].keys() == reference.keys()
    assert all(torch.equal(saved["tensors"][k], reference[k]) for k in reference)


def test_an_existing_out_is_replaced_only_with_force_and_atomically(trained_run, tmp_path, capsys):
    out = tmp_path / "encoders.safetensors"
    out.write_bytes(b"keep me")
    assert main(["export", str(trained_run), str(out)]) == 2
    assert "already exists: pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(trained_run), str(out), "--force"]) == 0
    assert load_file(out) and [p.name for p in tmp_path.iterdir()] == ["encoders.safetensors"]  # no temporary left


def test_shared_encoders_are_written_under_every_level(make_config, tmp_path):
    """model.share_encoders: level 1's blocks run at every level; safetensors refuses tensors that share
    memory, so each level gets its own copy, and each level's keys are complete on their own."""
    model = build_model(make_config("model.share_encoders=true"))
    tensors = encoder_tensors(model)
    save_file(tensors, str(tmp_path / "e.safetensors"))
    loaded = load_file(tmp_path / "e.safetensors")
    assert torch.equal(loaded["level1.encoder.blocks.0.attn.q.weight"], loaded["level2.encoder.blocks.0.attn.q.weight"])
    for i, encoder in enumerate(model.encoders, start=1):
        prefix = f"level{i}.encoder."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in loaded.items() if k.startswith(prefix)}, strict=True)
