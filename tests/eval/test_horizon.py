"""Future-state error: zero for a perfect prediction of a linearly readable state, the probe's own floor
for a model that predicts its targets exactly, and a horizon beyond the clip refused by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hjepa_fast.config import ConfigError
from hjepa_fast.eval.features import context_cut, extract_features
from hjepa_fast.eval.horizon import check_horizon, fit_state_probe, horizon_curves, state_error
from hjepa_fast.model.encoder import gather_tokens
from hjepa_fast.train.builders import build_dataset_for, build_model


def test_predicting_the_true_features_of_a_readable_state_has_zero_error():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 6, 8))
    states = features @ rng.normal(size=(8, 2)) + 10.0  # exactly linear in the features
    probe = fit_state_probe(features, states, alpha=1e-8)
    assert np.allclose(state_error(probe, features, states), 0.0, atol=1e-5)
    assert state_error(probe, features[:, ::-1], states).min() > 1.0  # the wrong steps are far off


def test_model_predicting_its_targets_reaches_the_probe_floor(make_config, monkeypatch):
    cfg = make_config()
    model = build_model(cfg)

    def predict_truth(context, masks, actions=None):  # the exact target encodings at the target tokens
        return [gather_tokens(t, m.target) for t, m in zip(truth, masks)]

    real_targets = model.encode_targets

    def encode_and_keep(clips):
        nonlocal truth
        truth = real_targets(clips)
        return truth

    truth = None
    monkeypatch.setattr(model, "encode_targets", encode_and_keep)
    monkeypatch.setattr(model, "predict", predict_truth)
    cut = context_cut(model, 0.5)
    assert cut == 8  # 16 frames, top level of 2 steps of 8 frames
    data = build_dataset_for(cfg, "train")
    features = extract_features(model, data, 24, 8, torch.device("cpu"), cut)
    assert features.context_steps == [4, 2, 1]
    curves = horizon_curves(model, features, features, check_horizon(model, cut, 0))
    assert [c["horizon"] for c in curves.values()] == [[1, 2, 3, 4], [1, 2], [1]]
    assert [c["frames_ahead"] for c in curves.values()] == [[2, 4, 6, 8], [4, 8], [8]]
    for c in curves.values():
        assert c["error"] == pytest.approx(c["floor"], abs=1e-6)


def test_a_horizon_beyond_the_clip_is_refused(make_config):
    model = build_model(make_config())
    with pytest.raises(ConfigError, match=r"eval.horizon=5 is beyond the clip: .* level 1 has 4 future steps"):
        check_horizon(model, 8, 5)
    assert check_horizon(model, 8, 3) == 3 and check_horizon(model, 8, 0) == 4
