"""Frozen features per level for probes: the EMA target encoders' token average."""
from __future__ import annotations

import numpy as np
import torch

from hjepa_fast.model.hjepa import HJEPA


@torch.no_grad()
def extract_features(model: HJEPA, dataset, n_clips: int, batch_size: int,
                     device: torch.device) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Features of the first ``n_clips`` clips of ``dataset``: one ``[n, D_l]`` array per level, and the
    labels ``{name: [n]}``."""
    n = min(n_clips, len(dataset))
    model.eval()
    feats: list[list[np.ndarray]] = [[] for _ in range(model.levels)]
    labels: dict[str, list[int]] = {}
    for start in range(0, n, batch_size):
        items = [dataset[(i, 0)] for i in range(start, min(start + batch_size, n))]
        clips = torch.stack([it["clip"] for it in items]).to(device)
        for level, f in enumerate(model.features(clips)):
            feats[level].append(f.float().cpu().numpy())
        for it in items:
            for name, value in it["labels"].items():
                labels.setdefault(name, []).append(value)
    return [np.concatenate(f) for f in feats], {k: np.asarray(v) for k, v in labels.items()}
