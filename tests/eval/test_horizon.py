"""Future-state error: zero for a perfect prediction of a linearly readable state, the probe's own floor
for a model that predicts its targets exactly (also when its predictions carry a constant offset: the
calibration removes it), the mean-state guess for a model that ignores its input, and a horizon beyond the
clip refused by name."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hjepa_fast.config import ConfigError
from hjepa_fast.eval.features import FeatureSet, LevelFeatures, context_cut, extract_features
from hjepa_fast.eval.horizon import check_horizon, fit_state_probe, horizon_curves, mean_state_error, state_error
from hjepa_fast.model.encoder import gather_tokens
from hjepa_fast.train.builders import build_dataset_for, build_model


def test_predicting_the_true_features_of_a_readable_state_has_zero_error():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 6, 8))
    states = features @ rng.normal(size=(8, 2)) + 10.0  # exactly linear in the features
    probe = fit_state_probe(features, states, alpha=1e-8)
    assert np.allclose(state_error(probe, features, states), 0.0, atol=1e-5)
    assert state_error(probe, features[:, ::-1], states).min() > 1.0  # the wrong steps are far off


def _curves_of(make_config, monkeypatch, predict_from_truth):
    """Horizon curves of the tiny model whose predictor is ``predict_from_truth(target tokens [B, Nt, D])``,
    with train = val = 24 clips."""
    cfg = make_config()
    model = build_model(cfg)

    def predict_truth(context, masks, actions=None):
        return [predict_from_truth(gather_tokens(t, m.target)) for t, m in zip(truth, masks)]

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
    return horizon_curves(model, features, features, check_horizon(model, cut, 0))


def test_model_predicting_its_targets_reaches_the_probe_floor(make_config, monkeypatch):
    curves = _curves_of(make_config, monkeypatch, lambda truth: truth)
    assert [c["horizon"] for c in curves.values()] == [[1, 2, 3, 4], [1, 2], [1]]
    assert [c["frames_ahead"] for c in curves.values()] == [[2, 4, 6, 8], [4, 8], [8]]
    for c in curves.values():
        assert c["error"] == pytest.approx(c["floor"], abs=1e-6)
        assert c["error_raw"] == pytest.approx(c["floor"], abs=1e-6)
        assert c["spread_ratio"] == pytest.approx(1.0, abs=1e-4)


def test_a_constant_offset_is_calibrated_away():
    rng = np.random.default_rng(1)
    n, T, c, D = 60, 6, 2, 8
    steps = rng.normal(size=(n, T, D))
    states = steps @ rng.normal(size=(D, 2)) + 5.0
    offset = rng.normal(size=D) * 3.0
    level = LevelFeatures(steps.mean(1), steps, steps[:, c:] + offset, states, steps, steps[:, c:] + offset)
    features = FeatureSet([level], {}, [c])
    model = SimpleNamespace(grids=[(T, 1, 1)], frames=T)
    curve = horizon_curves(model, features, features, T - c)["level1"]
    assert curve["error"] == pytest.approx(curve["floor"], abs=1e-6)
    assert min(curve["error_raw"]) > max(curve["floor"]) + 1.0  # uncalibrated, the offset reads as far off
    assert curve["spread_ratio"] == pytest.approx(1.0)


def test_a_predictor_that_ignores_its_input_scores_the_mean_state_guess(make_config, monkeypatch):
    curves = _curves_of(make_config, monkeypatch, lambda truth: torch.linspace(-1, 1, truth.shape[-1]).expand_as(truth))
    for c in curves.values():
        assert c["spread_ratio"] < 1e-4
        # the probe of the mean target features reads the mean state up to the probe's fit at that step
        assert c["error"] == pytest.approx(c["mean_state"], rel=0.15)
        assert min(c["mean_state"]) > max(c["floor"])


def test_mean_state_error_is_the_distance_to_the_training_mean():
    train = np.zeros((4, 2, 2))
    train[:, 1] = [[0, 0], [2, 0], [0, 2], [2, 2]]  # step 2's mean: (1, 1)
    val = np.array([[[3.0, 4.0], [1.0, 4.0]]])
    assert mean_state_error(train, val).tolist() == pytest.approx([5.0, 3.0])


def test_a_horizon_beyond_the_clip_is_refused(make_config):
    model = build_model(make_config())
    with pytest.raises(ConfigError, match=r"eval.horizon=5 is beyond the clip: .* level 1 has 4 future steps"):
        check_horizon(model, 8, 5)
    assert check_horizon(model, 8, 3) == 3 and check_horizon(model, 8, 0) == 4


def test_the_state_probe_reads_where_on_the_grid_the_object_is():
    from hjepa_fast.eval.features import _cell_means

    # one "object" token on a field of identical background tokens: every position has the same spatial
    # mean, so only the cell grid tells positions apart
    n, H, W, D = 200, 8, 8, 6
    rng = np.random.default_rng(0)
    where = rng.integers(0, H * W, size=n)
    tokens = torch.zeros(n, H * W, D)
    tokens[..., 0] = 1.0
    tokens[torch.arange(n), torch.from_numpy(where), 1] = 3.0
    states = np.stack([where // W, where % W], axis=-1)[:, None].astype(float)  # [n, 1, 2]
    grid = _cell_means(tokens, 1, H, W).numpy()
    assert grid.shape == (n, 1, 16 * D)
    unit = torch.nn.functional.normalize(tokens, dim=-1).view(n, 4, 2, 4, 2, D)
    torch.testing.assert_close(torch.from_numpy(grid).view(n, D, 4, 4), unit.mean((2, 4)).permute(0, 3, 1, 2))
    mean = torch.nn.functional.normalize(tokens, dim=-1).mean(1, keepdim=True).numpy()
    from_grid = state_error(fit_state_probe(grid, states), grid, states)[0]
    from_mean = state_error(fit_state_probe(mean, states), mean, states)[0]
    assert from_grid < 0.5 * from_mean  # cells of 2 x 2 tokens: about a token's accuracy
