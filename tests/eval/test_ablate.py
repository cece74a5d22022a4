"""``hjepa ablate`` on a tiny budget: one row per variant and seed, a table, JSON and a plot."""
from __future__ import annotations

import json

from hjepa_fast.ablate import variants
from hjepa_fast.cli import main
from hjepa_fast.config import load_config

from .test_eval_cli import TINY_RUN


def test_variants_are_config_overrides_of_the_base():
    table = variants(load_config("configs/tiny_cpu.yaml"))
    assert list(table) == ["base", "levels=1", "levels=2", "topdown=none", "topdown_source=context", "strides=1",
                           "abstraction=average",
                           "abstraction=conv", "share_encoders=true", "weighting=increasing", "weighting=curriculum",
                           "weighting=uncertainty", "anti_collapse=off", "ema=off", "predictor_init=trunc_normal"]
    assert table["anti_collapse=off"][-1] == "train.target_encoder=ema"
    online = variants(load_config("configs/tiny_cpu.yaml", ["train.target_encoder=online", "data.digits=2"]))
    assert "target_encoder=ema" in online and "ema=off" not in online  # tau 0 is what online already is
    assert online["data=one_digit_on_black"] == ["data.digits=1", "data.background=black"]
    for overrides in table.values():  # every variant is a valid config
        load_config("configs/tiny_cpu.yaml", overrides)


def test_tiny_ablation_gives_one_row_per_variant_and_seed(tmp_path, capsys):
    out = tmp_path / "ablate"
    tiny = [o for o in TINY_RUN if not o.startswith("train.steps")]  # the budget scales the config's steps
    budget = 3 / load_config("configs/tiny_cpu.yaml").train.steps
    assert main(["ablate", "--config", "configs/tiny_cpu.yaml", *tiny, "--seeds", "2", "--budget", str(budget),
                 "--out", str(out), "--variants", "base", "ema=off"]) == 0
    report = json.loads((out / "ablate.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in report["rows"]) == [("base", 0), ("base", 1),
                                                                        ("ema=off", 0), ("ema=off", 1)]
    assert all(r["steps"] == 3 for r in report["rows"])
    table = (out / "ablate.md").read_text()
    assert "| base | 2 |" in table and "| ema=off | 2 |" in table and "±" in table
    assert (out / "ablate.png").is_file() and "ablate.md" in capsys.readouterr().out
    assert main(["ablate", "--config", "configs/tiny_cpu.yaml", "--variants", "shared"]) == 2
    assert "unknown variant 'shared'" in capsys.readouterr().err
