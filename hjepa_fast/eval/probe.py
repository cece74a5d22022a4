"""Linear probes on frozen features, per level and all levels concatenated, for a trained run and for
the same model at its random initialisation (the baseline a trained model must beat)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from hjepa_fast.config import config_from_dict
from hjepa_fast.kernels import set_kernel_mode
from hjepa_fast.train.builders import build_dataset_for, build_model
from hjepa_fast.train.checkpoint import load_checkpoint
from hjepa_fast.train.trainer import CHECKPOINT, pick_device

from .features import extract_features


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 seed: int = 0) -> float:
    """Accuracy on the validation set of a multinomial logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    probe.fit(train_x, train_y)
    return float(probe.score(val_x, val_y))


def probe_model(model, cfg, device: torch.device) -> dict[str, dict[str, float]]:
    """``{feature set: {label: accuracy}}`` with feature sets ``level1 .. levelL`` and ``all``."""
    e = cfg.eval
    train_f, train_y = extract_features(model, build_dataset_for(cfg, "train"), e.train_clips, e.batch_size, device)
    val_f, val_y = extract_features(model, build_dataset_for(cfg, "val"), e.val_clips, e.batch_size, device)
    sets = {f"level{i + 1}": (tf, vf) for i, (tf, vf) in enumerate(zip(train_f, val_f))}
    sets["all"] = (np.concatenate(train_f, axis=1), np.concatenate(val_f, axis=1))
    return {name: {label: linear_probe(tx, train_y[label], vx, val_y[label], cfg.train.seed) for label in train_y}
            for name, (tx, vx) in sets.items()}


def evaluate_run(run_dir: str | Path) -> dict:
    """Probe a run's final checkpoint and its random initialisation; write ``eval.json`` in the run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml")
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    device = pick_device(cfg)
    set_kernel_mode(cfg.model.kernels)
    state = load_checkpoint(run_dir / CHECKPOINT)
    random_model = build_model(cfg).to(device)
    trained = build_model(cfg).to(device)
    trained.load_state_dict(state["model"])
    result = {"step": state["step"], "trained": probe_model(trained, cfg, device),
              "random": probe_model(random_model, cfg, device)}
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    """Accuracy per feature set and label: trained vs random initialisation."""
    labels = list(next(iter(result["trained"].values())).keys())
    header = f"{'features':<10}" + "".join(f"{label + ' trained':>20}{label + ' random':>20}" for label in labels)
    lines = [f"linear probe accuracy (run at step {result['step']})", header, "-" * len(header)]
    for name, accs in result["trained"].items():
        lines.append(f"{name:<10}" + "".join(f"{accs[lb]:>20.3f}{result['random'][name][lb]:>20.3f}" for lb in labels))
    return "\n".join(lines)
