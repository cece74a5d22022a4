"""``hjepa eval``: on frozen features, per level and all levels concatenated, linear-probe accuracy for
each label, future-state error against horizon and collapse diagnostics, for a trained run and for the
same model at its random initialisation (the baseline a trained model must beat)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hjepa_fast.builders import build_dataset_for, build_model
from hjepa_fast.checkpoint import load_model_state
from hjepa_fast.config import Config, ConfigError, config_from_dict, to_dict
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.metrics import collapse_report
from hjepa_fast.model.hjepa import HJEPA
from hjepa_fast.runs import load_run, pick_device

from .features import FeatureSet, context_cut, extract_features
from .horizon import check_horizon, horizon_curves

__all__ = ["BLIND_SPREAD", "check_labels", "evaluate_model", "evaluate_run", "format_table", "linear_probe",
           "load_run", "plot_horizon", "probe_features"]  # load_run lives in hjepa_fast.runs: re-exported


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 seed: int = 0) -> float:
    """Accuracy on the validation set of a multinomial logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    probe.fit(train_x, train_y)
    return float(probe.score(val_x, val_y))


def check_labels(requested: list[str], available: list[str], dataset: str) -> list[str]:
    """The labels to probe (all available when none is requested); refuses one the data set lacks."""
    missing = [label for label in requested if label not in available]
    if missing:
        raise ConfigError(f"label {missing[0]!r} is not a label of data set {dataset} "
                          f"(it has: {', '.join(available)})")
    return list(requested) or list(available)


def probe_features(train: FeatureSet, val: FeatureSet, labels: list[str], seed: int) -> dict[str, dict[str, float]]:
    """``{feature set: {label: accuracy}}`` with feature sets ``level1 .. levelL`` and ``all``."""
    sets = {f"level{i + 1}": (t.pooled, v.pooled) for i, (t, v) in enumerate(zip(train.levels, val.levels))}
    sets["all"] = (np.concatenate([t.pooled for t in train.levels], axis=1),
                   np.concatenate([v.pooled for v in val.levels], axis=1))
    return {name: {label: linear_probe(tx, train.labels[label], vx, val.labels[label], seed) for label in labels}
            for name, (tx, vx) in sets.items()}


def evaluate_model(model: HJEPA, cfg: Config, device: torch.device, progress: str | None = None) -> dict:
    """``{"probe", "horizon", "collapse", "context_frames"}`` of one model; ``horizon`` is None on a data set
    without ground-truth state. Bad eval settings are refused before any feature is computed. ``progress``:
    the label of a progress bar over the clips (None: no bar)."""
    e = cfg.eval
    if not 0.0 < e.context_fraction < 1.0:
        raise ConfigError(f"eval.context_fraction must lie in (0, 1), got {e.context_fraction}")
    train_set, val_set = build_dataset_for(cfg, "train"), build_dataset_for(cfg, "val")
    labels = check_labels(e.labels, list(train_set[(0, 0)]["labels"]), cfg.data.dataset)
    cut = context_cut(model, e.context_fraction)
    horizon = check_horizon(model, cut, e.horizon)
    n_train, n_val = min(e.train_clips, len(train_set)), min(e.val_clips, len(val_set))
    with tqdm(total=n_train + n_val, desc=progress, unit="clip", disable=progress is None, dynamic_ncols=True) as bar:
        train = extract_features(model, train_set, n_train, e.batch_size, device, cut, bar)
        val = extract_features(model, val_set, n_val, e.batch_size, device, cut, bar)
    return {
        "probe": probe_features(train, val, labels, cfg.train.seed),
        "horizon": horizon_curves(model, train, val, horizon) if hasattr(val_set, "positions") else None,
        "collapse": {f"level{i + 1}": collapse_report(torch.from_numpy(v.pooled)) for i, v in enumerate(val.levels)},
        "context_frames": cut,
    }


def evaluate_run(run_dir: str | Path, overrides: dict | None = None, progress: bool = False) -> dict:
    """Evaluate a run's final checkpoint (any engine's: ``runs.load_run``) and its random initialisation;
    write ``eval.json`` and ``horizon.png`` in the run. ``overrides``: ``{eval setting: value}`` over the
    run's ``eval`` section; ``progress``: a bar (with its ETA) per model."""
    run_dir = Path(run_dir)
    cfg, state = load_run(run_dir)
    tree = to_dict(cfg)
    tree["eval"].update(overrides or {})
    cfg = config_from_dict(tree)  # the overrides pass the same checks as the config file
    device = pick_device(cfg)
    set_kernel_mode(cfg.model.kernels)
    random_model = build_model(cfg).to(device)
    trained = build_model(cfg).to(device)
    load_model_state(trained, state, state["path"])
    ours = evaluate_model(trained, cfg, device, "eval: trained model" if progress else None)
    init = evaluate_model(random_model, cfg, device, "eval: model at initialisation" if progress else None)
    result = {"step": state["step"], "trained": ours["probe"], "random": init["probe"],
              "horizon": None if ours["horizon"] is None else {"trained": ours["horizon"], "random": init["horizon"]},
              "collapse": {"trained": ours["collapse"], "random": init["collapse"]},
              "context_frames": ours["context_frames"], "state_units": "px (digit centre)"}
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    if result["horizon"] is not None:
        plot_horizon(result["horizon"]["trained"], run_dir / "horizon.png", f"{run_dir.name}, step {result['step']}")
    return result


BLIND_SPREAD = 0.05  # prediction spread below which a level's predictor is reported as ignoring its context


def plot_horizon(curves: dict[str, dict], path: Path, title: str) -> Path:
    """Future-state error against frames ahead, one line per level; level 1's copy-last guess dashed, its
    context-blind mean-state guess dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        ax.plot(c["frames_ahead"], c["error"], marker="o", label=name)
    first = next(iter(curves.values()))
    ax.plot(first["frames_ahead"], first["copy_last"], "k--", alpha=0.5, label="level1 copy-last")
    ax.plot(first["frames_ahead"], first["mean_state"], "k:", alpha=0.5, label="level1 mean state")
    ax.set_xlabel("frames ahead of the context")
    ax.set_ylabel("future-state error (px)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(result: dict) -> str:
    """Probe accuracy, future-state error and collapse diagnostics: trained vs random initialisation."""
    labels = list(next(iter(result["trained"].values())).keys())
    header = f"{'features':<10}" + "".join(f"{label + ' trained':>20}{label + ' random':>20}" for label in labels)
    lines = [f"linear probe accuracy (run at step {result['step']})", header, "-" * len(header)]
    for name, accs in result["trained"].items():
        lines.append(f"{name:<10}" + "".join(f"{accs[lb]:>20.3f}{result['random'][name][lb]:>20.3f}" for lb in labels))
    if result["horizon"] is not None:
        lines += ["", f"future-state error, {result['state_units']}, after {result['context_frames']} context frames",
                  "(calibrated: the mean offset of predictions from targets on training clips removed; raw: not)",
                  f"{'level':<8}{'h':>3}{'frames':>8}{'trained':>10}{'raw':>8}{'random':>10}{'copy-last':>11}"
                  f"{'mean-state':>12}{'floor':>8}"]
        for name, c in result["horizon"]["trained"].items():
            r = result["horizon"]["random"][name]
            for i, h in enumerate(c["horizon"]):
                lines.append(f"{name:<8}{h:>3}{c['frames_ahead'][i]:>8}{c['error'][i]:>10.2f}{c['error_raw'][i]:>8.2f}"
                             f"{r['error'][i]:>10.2f}{c['copy_last'][i]:>11.2f}{c['mean_state'][i]:>12.2f}"
                             f"{c['floor'][i]:>8.2f}")
        spreads = {name: c["spread_ratio"] for name, c in result["horizon"]["trained"].items()}
        lines.append("prediction spread (clip-to-clip std of predictions / of targets; 0: context ignored): "
                     + ", ".join(f"{name} {v:.3f}" for name, v in spreads.items()))
        blind = [name for name, v in spreads.items() if v < BLIND_SPREAD]
        if blind:
            lines.append(f"WARNING: {', '.join(blind)} predict(s) nearly the same features for every clip (spread < "
                         f"{BLIND_SPREAD}): their error is the context-blind mean-state guess, not foresight")
    lines += ["", "collapse diagnostics (held-out clip features; spread 1 = isotropic, 0 = constant)",
              f"{'level':<8}{'spread trained':>16}{'spread random':>15}{'RankMe trained':>16}{'RankMe random':>15}"]
    for name, c in result["collapse"]["trained"].items():
        r = result["collapse"]["random"][name]
        flag = "  COLLAPSED" if c["collapsed"] else ""
        lines.append(f"{name:<8}{c['spread']:>16.4f}{r['spread']:>15.4f}{c['rankme']:>16.1f}{r['rankme']:>15.1f}{flag}")
    collapsed = [name for name, c in result["collapse"]["trained"].items() if c["collapsed"]]
    if collapsed:
        lines.append(f"WARNING: {', '.join(collapsed)} collapsed (its features barely differ between clips): "
                     "turn on an anti-collapse term there (loss.variance_weight, loss.sigreg_weight)")
    return "\n".join(lines)
