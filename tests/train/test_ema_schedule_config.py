"""train.ema_schedule: the config key reaches the EMA the engines build, per level."""
import pytest

from hjepa_fast.config import ConfigError
from hjepa_fast.train.builders import build_model, build_optimizer
from hjepa_fast.train.engine import SingleProcessEngine


def test_ema_schedule_key_reaches_the_engine_ema(make_config):
    cfg = make_config("train.ema_schedule=[linear,cosine,linear,cosine]", "train.steps=10",
                      "train.ema_tau_base=[0.9,0.9,0.9]", "train.ema_tau_end=[1.0,1.0,1.0]")
    assert cfg.train.ema_schedule == ["linear", "cosine", "linear"]  # truncated to model.levels
    model = build_model(cfg)
    ema = SingleProcessEngine(model, build_optimizer(model, cfg)).build_ema(cfg)
    taus = ema.taus(3)
    assert taus[0] == pytest.approx(0.93) and taus[2] == pytest.approx(0.93)  # linear: 0.9 + 0.1 * 3/10
    assert taus[1] == pytest.approx(1.0 - 0.1 * (1 + 0.5877852522924731) / 2)  # cosine: cos(0.3 pi)


@pytest.mark.parametrize("value,message", [("[linear,exp,cosine]", "cosine or linear"),
                                           ("[linear]", "one entry per level")])
def test_ema_schedule_key_refuses_bad_values(make_config, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config(f"train.ema_schedule={value}")
