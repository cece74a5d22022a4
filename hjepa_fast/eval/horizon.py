"""Future-state error against horizon, in the data's own units.

A ridge probe is fitted, per level, on the *target* encoder's per-step token grid (averaged into at most
4 x 4 cells, ``features._cell_means``) to read the ground-truth state (the digit's centre, in pixels).
It is then applied to the model's *predicted* features of the
future steps: horizon h at level l is the step h steps of level l after the context (h * frames-per-step
frames ahead).

``error`` is calibrated: the predictions' mean offset from the targets at each horizon, measured on the
training clips, is removed before the read-out. Without it (``error_raw``) a predictor whose outputs sit a
little off the target manifold reads as out of frame however much it knows; with it, a predictor that
ignores its context scores about ``mean_state`` (exactly where the probe's fit has no bias at that step).
References: ``floor`` reads the true target features of that step (a model predicting its targets
exactly reaches it), ``copy_last`` the last context step's ("nothing moves"), ``mean_state`` is the
error of the training clips' mean state of that step (what a context-blind guess achieves).
``spread_ratio``: the predictions' clip-to-clip std over the targets' (per dimension, averaged): near 0
means the predictor outputs the same thing whatever it sees."""
from __future__ import annotations

import numpy as np

from hjepa_fast.config import ConfigError
from hjepa_fast.model.hjepa import HJEPA

from .features import FeatureSet


def fit_state_probe(features: np.ndarray, states: np.ndarray, alpha: float = 1.0):
    """Ridge regression on standardised features: ``[n, ..., D] -> [n, ..., S]`` (leading dims flattened)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    flat = states.reshape(-1, states.shape[-1])
    probe = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(features.reshape(-1, features.shape[-1]), flat)
    probe.state_range = (flat.min(axis=0), flat.max(axis=0))
    return probe


def state_error(probe, features: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance between read-out and true state, per column of ``[n, H, D]`` vs
    ``[n, H, S]``: ``[H]``, in the state's units. Read-outs are clipped to the range of the states the probe
    was fitted on (the frame, for positions): features off the target manifold, as an untrained predictor
    makes, would otherwise read as states hundreds of pixels outside the frame."""
    n, H, D = features.shape
    read = np.clip(probe.predict(features.reshape(n * H, D)).reshape(n, H, -1), *probe.state_range)
    return np.linalg.norm(read - states, axis=-1).mean(axis=0)


def mean_state_error(train_states: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Error of guessing each step's mean training state: ``[n_train, H, S]``, ``[n, H, S]`` -> ``[H]``."""
    return np.linalg.norm(states - train_states.mean(axis=0, keepdims=True), axis=-1).mean(axis=0)


def spread_ratio(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Clip-to-clip std of the predictions over that of the targets, ``[n, H, D]`` each, averaged over
    steps and dimensions."""
    return float(predicted.std(axis=0).mean() / max(targets.std(axis=0).mean(), 1e-12))


def check_horizon(model: HJEPA, cut: int, horizon: int) -> int:
    """The largest horizon to report (level-1 steps); refuses one beyond the clip."""
    T = model.grids[0][0]
    per_step = model.frames // T
    left = T - cut // per_step
    if horizon < 0:
        raise ConfigError(f"eval.horizon must be >= 0 (0: as far as the clip allows), got {horizon}")
    if horizon > left:
        raise ConfigError(f"eval.horizon={horizon} is beyond the clip: after {cut} context frames, level 1 has "
                          f"{left} future steps of {per_step} frames (data.frames={model.frames}); "
                          f"use a horizon <= {left} or a smaller eval.context_fraction")
    return horizon or left


def horizon_curves(model: HJEPA, train: FeatureSet, val: FeatureSet, horizon: int) -> dict[str, dict]:
    """Per level: ``{"horizon", "frames_ahead", "error", "error_raw", "floor", "copy_last", "mean_state"}``
    (lists over h = 1..H_l, H_l = the future steps of level l, at most ``horizon``) and ``spread_ratio``;
    probes and the calibration offset fitted on ``train``, errors on ``val``."""
    curves = {}
    for level, ((T, _, _), tr, va, c) in enumerate(zip(model.grids, train.levels, val.levels, val.context_steps)):
        if tr.states is None or va.states is None:
            raise ConfigError("the data set has no ground-truth state (a positions() method) for the "
                              "future-state probe; data.dataset=moving_digits has one")
        probe = fit_state_probe(tr.grid, tr.states)
        H = min(horizon, T - c)
        future = slice(c, c + H)
        last = np.repeat(va.grid[:, c - 1:c], H, axis=1)
        offset = (tr.predicted_grid[:, :H] - tr.grid[:, future]).mean(axis=0, keepdims=True)  # [1, H, G*D]
        truth = va.states[:, future]
        curves[f"level{level + 1}"] = {
            "horizon": list(range(1, H + 1)),
            "frames_ahead": [h * (model.frames // T) for h in range(1, H + 1)],
            "error": state_error(probe, va.predicted_grid[:, :H] - offset, truth).tolist(),
            "error_raw": state_error(probe, va.predicted_grid[:, :H], truth).tolist(),
            "floor": state_error(probe, va.grid[:, future], truth).tolist(),
            "copy_last": state_error(probe, last, truth).tolist(),
            "mean_state": mean_state_error(tr.states[:, future], truth).tolist(),
            "spread_ratio": spread_ratio(va.predicted[:, :H], va.steps[:, future]),
        }
    return curves
