"""``model.share_encoders``: levels above 1 run level 1's transformer blocks and norm (online and target),
each parameter is trained and EMA-updated once, training and resuming work, and bad settings are refused."""
from __future__ import annotations

import copy

import pytest
import torch

from hjepa_fast.ablate import variants
from hjepa_fast.checkpoint import load_checkpoint
from hjepa_fast.config import ConfigError, load_config
from hjepa_fast.kernels import EMASchedule, MultiLevelEMA
from hjepa_fast.train.builders import build_model, count_parameters
from hjepa_fast.train.deepspeed_engine import DeepSpeedTargetEMA
from hjepa_fast.train.ema import TargetEMA
from hjepa_fast.train.parallelize import apply_activation_checkpointing, apply_fsdp
from hjepa_fast.train.trainer import train

SHARE = "model.share_encoders=true"
TAUS = ["train.ema_tau_base=[0.5,0.9,0.99]", "train.ema_tau_end=[0.5,0.9,0.99]"]


def trunk(encoder) -> list[torch.nn.Parameter]:
    """The parameters sharing reuses: transformer blocks and final LayerNorm."""
    return [*encoder.blocks.parameters(), *encoder.norm.parameters()]


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_upper_levels_run_level_one_blocks_in_online_and_target(make_config):
    shared, plain = build_model(make_config(SHARE)), build_model(make_config())
    for encoders in (shared.encoders, shared.target_encoders):
        for encoder in encoders[1:]:
            assert encoder.blocks is encoders[0].blocks and encoder.norm is encoders[0].norm
            assert ids(trunk(encoder)) == ids(trunk(encoders[0]))
            assert encoder.tokenizer is not encoders[0].tokenizer and encoder.pos is not encoders[0].pos
    assert set(ids(trunk(shared.encoders[0]))).isdisjoint(ids(trunk(shared.target_encoders[0])))
    assert len(set(map(id, shared.predictors))) == shared.levels
    # the online and target copies of levels 2..L lose their own blocks and norm, nothing else
    removed = sum(p.numel() for enc in (*plain.encoders[1:], *plain.target_encoders[1:]) for p in trunk(enc))
    assert removed > 0 and count_parameters(shared) == count_parameters(plain) - removed
    assert shared.state_dict().keys() == plain.state_dict().keys()  # the shared tensors under every level's name
    # a deepcopy (how the targets are made) keeps the sharing
    again = copy.deepcopy(shared)
    assert again.encoders[2].blocks is again.encoders[0].blocks
    assert again.target_encoders[1].norm is again.target_encoders[0].norm


def test_each_parameter_is_trained_and_ema_updated_once(make_config):
    model = build_model(make_config(SHARE))
    online = model.online_parameters()
    assert len(ids(online)) == len(set(ids(online)))
    assert set(ids(online)) == set(ids(model.encoders.parameters())) | set(ids(model.predictors.parameters())) | \
        set(ids(model.loss_weighting.parameters()))
    targets, sources = model.ema_pairs()
    for groups, modules in ((targets, model.target_encoders), (sources, model.encoders)):
        flat = [id(p) for g in groups for p in g]
        assert len(flat) == len(set(flat)) and set(flat) == set(ids(modules.parameters()))
        assert ids(trunk(modules[0])) == [i for i in ids(groups[0]) if i in set(ids(trunk(modules[0])))]
    # per level parameter lists (what ema_pairs gave before sharing) hold a parameter twice: refused
    with pytest.raises(ValueError, match="appears twice"):
        MultiLevelEMA(model.target_encoders, model.encoders, EMASchedule([0.5] * 3, [0.5] * 3, 10))


def moved_once(cfg, make_ema) -> None:
    """Move every online parameter, take one EMA step: shared target parameters moved once with level 1's
    tau, level 2's own (tokenizer) parameters with level 2's tau."""
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(1.0)
    before = {id(p): p.detach().clone() for p in model.target_encoders.parameters()}
    ema = make_ema(model)
    ema.update(0)
    tau1, tau2 = cfg.train.ema_tau_base[:2]
    for level, tau in ((0, tau1), (1, tau2)):
        own = [*trunk(model.target_encoders[0])] if level == 0 else [*model.target_encoders[1].tokenizer.parameters()]
        src = [*trunk(model.encoders[0])] if level == 0 else [*model.encoders[1].tokenizer.parameters()]
        for t, s in zip(own, src):
            torch.testing.assert_close(t, before[id(t)].lerp(s, 1.0 - tau), rtol=0, atol=1e-6)
    for encoder in model.target_encoders[1:]:
        for a, b in zip(trunk(encoder), trunk(model.target_encoders[0])):
            assert torch.equal(a, b)


def test_ema_step_moves_shared_targets_once_with_level_one_tau(make_config):
    cfg = make_config(SHARE, *TAUS)

    def trainer_ema(model):  # as engine.SingleProcessEngine.build_ema builds it
        targets, sources = model.ema_pairs()
        return TargetEMA(targets, sources, cfg.train.ema_tau_base, cfg.train.ema_tau_end, cfg.train.steps)

    moved_once(cfg, trainer_ema)
    moved_once(cfg, lambda model: DeepSpeedTargetEMA(model.target_encoders, model.encoders, False, cfg))


def test_training_runs_and_resumes_exactly(make_config, tmp_path, monkeypatch):
    cfg = make_config(SHARE, *TAUS, "train.steps=4", "train.ckpt_every=2", "train.lr=4e-2")
    (tmp_path / "full").mkdir()
    full = [row["loss"] for row in train(cfg, run_dir=tmp_path / "full", progress=False)["losses"]]
    assert len(full) == 4 and all(torch.isfinite(torch.tensor(full)))
    state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    for prefix in ("encoders", "target_encoders"):  # saved under both names, equal; loads into a fresh model
        assert torch.equal(state[f"{prefix}.0.blocks.0.mlp.fc1.weight"], state[f"{prefix}.2.blocks.0.mlp.fc1.weight"])
    model = build_model(cfg)
    model.load_state_dict(state)
    assert model.encoders[1].blocks is model.encoders[0].blocks
    assert torch.equal(model.target_encoders[2].norm.weight, state["target_encoders.0.norm.weight"])

    real_update = TargetEMA.update

    def crash_at_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_update(self, step)

    monkeypatch.setattr(TargetEMA, "update", crash_at_step_3)
    (tmp_path / "crashed").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 2
    resumed = train(cfg, run_dir=tmp_path / "crashed", resume=True, progress=False)
    assert [row["loss"] for row in resumed["losses"]] == full[2:]


def test_activation_checkpointing_wraps_a_shared_block_once(make_config):
    model = build_model(make_config(SHARE))
    assert apply_activation_checkpointing(model, [True, True, True]) == 1 + 3  # shared encoder block, 3 predictors
    forward = model.encoders[0].blocks[0].forward
    assert apply_activation_checkpointing(model, [False, True, False]) == 1 + 1
    assert model.encoders[1].blocks[0].forward is forward  # not wrapped again


@pytest.mark.parametrize("key,value", [("encoder_dims", "[32,64,32]"), ("encoder_heads", "[2,4,2]"),
                                       ("encoder_depths", "[1,2,1]")])
def test_unequal_levels_are_refused(make_config, key, value):
    with pytest.raises(ConfigError, match=rf"model\.{key}.*got \[{value[1:-1].replace(',', ', ')}\]"):
        make_config(SHARE, f"model.{key}={value}")
    make_config(f"model.{key}={value}")  # fine without sharing
    make_config(SHARE, f"model.{key}={value}", "model.levels=1")  # one level: nothing to share


def test_fsdp_is_refused_at_start_up(make_config):
    with pytest.raises(ConfigError, match="share_encoders.*train.engine=fsdp"):
        make_config(SHARE, "train.engine=fsdp")
    with pytest.raises(ConfigError, match="share_encoders"):  # also a model built past the config check
        apply_fsdp(build_model(make_config(SHARE)), mesh=None)


def test_ablation_has_the_shared_encoder_variant(make_config):
    table = variants(make_config())
    assert table["share_encoders=true"] == [SHARE]  # the tiny config's levels already agree
    table = variants(load_config("configs/tiny_cpu.yaml", ["model.encoder_dims=[64,32,64]",
                                                           "model.encoder_heads=[4,2,4]"]))
    assert table["share_encoders=true"] == [SHARE, "model.encoder_dims=[64, 64, 64]", "model.encoder_heads=[4, 4, 4]",
                                            "model.encoder_depths=[2, 2, 2]"]
    cfg = load_config("configs/tiny_cpu.yaml", table["share_encoders=true"])
    assert cfg.model.share_encoders and cfg.model.encoder_depths == [2, 2, 2]
    assert "share_encoders=true" not in variants(make_config(SHARE))
    assert "share_encoders=true" not in variants(make_config("model.levels=1"))
