"""Config: every key overridable, wrong keys and types refused with a message that names them."""
from __future__ import annotations

import pytest

from hjepa_fast.config import ConfigError, config_from_dict, load_config, save_config, to_dict

TINY_CPU = "configs/tiny_cpu.yaml"


def test_overrides_apply_and_per_level_lists_follow_model_levels():
    cfg = load_config(TINY_CPU, ["model.levels=2", "train.batch_size=16", "train.lr=1e-4", "model.topdown=film"])
    assert cfg.model.levels == 2 and cfg.train.batch_size == 16 and cfg.train.lr == 1e-4
    assert cfg.model.encoder_dims == [64, 64] and cfg.masks.strategies == ["future", "future"]
    assert cfg.model.topdown == "film"


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(TINY_CPU, ["model.levels=2"])
    save_config(cfg, tmp_path / "c.yaml")
    assert to_dict(load_config(tmp_path / "c.yaml")) == to_dict(cfg)
    assert to_dict(config_from_dict(to_dict(cfg))) == to_dict(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.batch_sise=4", r"unknown config key 'train.batch_sise' \(did you mean 'train.batch_size'\?\)"),
        ("trian.steps=4", "unknown config key 'trian.steps'"),
        ("train.batch_size=abc", "'train.batch_size' must be int, got 'abc'"),
        ("model.levels=2.5", "'model.levels' must be int"),
        ("train.lr=fast", "'train.lr' must be float"),
        ("model.encoder_dims=64", "'model.encoder_dims' must be a list"),
        ("model.encoder_dims=[64,x,64]", r"'model.encoder_dims\[1\]' must be int"),
        ("model.topdown=sideways", "'model.topdown' must be one of"),
        ("model.levels=4", "'model.temporal_strides' needs one entry per level"),
        ("masks.strategies=[multiblock,future,random]", "unknown strategy 'random'"),
        ("model.temporal_strides=[1,3,2]", r"temporal_strides\[1\] = 3 does not divide"),
        ("train.ema_tau_end=[1.0,1.0,1.5]", r"must lie in \[0, 1\]"),
        ("train.steps", "must look like section.name=value"),
        ("steps=3", "must be section.name"),
        ("data.dataset=video_folder", "needs data.root"),
        ("model.action_accumulate=true", r"action_accumulate needs actions \(model.action_dim > 0\)"),
    ],
)
def test_bad_keys_and_values_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CPU, [override])


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model:\n  levles: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.levles'"):
        load_config(bad)


def test_the_reference_recipe_loads():
    cfg = load_config("configs/vitb_3level.yaml")
    assert cfg.model.encoder_dims == [768, 384, 192] and cfg.model.encoder_depths == [12, 6, 4]
    assert cfg.model.predictor_dims == [384, 192, 96] and cfg.train.batch_size == 2048
