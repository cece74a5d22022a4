"""Run-folder outputs: metrics CSV (and TensorBoard where installed), a loss-curve plot."""
from __future__ import annotations

import csv
from pathlib import Path


class MetricsLogger:
    """Appends one row per logged step to ``metrics.csv``. On resume, rows after the checkpoint's step
    are dropped first, so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = run_dir / "metrics.csv"
        self.fields: list[str] | None = None
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                self._write(rows, mode="w")
            else:
                self.path.unlink()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def _write(self, rows: list[dict], mode: str) -> None:
        new = mode == "w" or not self.path.is_file()
        with open(self.path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def log(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row.keys())
        self._write([row], mode="a")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(run_dir: Path) -> Path | None:
    """``loss.png``: against step, the total and per-level prediction loss (log scale) and, where logged,
    each level's anti-collapse term, target-feature spread and RankMe: a collapse shows as a level whose
    loss falls while its spread and RankMe fall with it."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    panels = [("loss", "loss (total; prediction per level)", lambda k: k == "loss" or k.startswith("loss_l"), "log"),
              ("reg", "anti-collapse term", lambda k: k.startswith("reg_l"), "linear"),
              ("spread", "target feature spread", lambda k: k.startswith("spread_l"), "linear"),
              ("rankme", "target RankMe", lambda k: k.startswith("rankme_l"), "linear")]
    panels = [(title, label, [k for k in rows[0] if pick(k)], scale) for title, label, pick, scale in panels]
    panels = [p for p in panels if p[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (_, label, keys, scale) in zip(axes[0], panels):
        for key in keys:
            ax.plot(steps, [float(r[key]) for r in rows], label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_yscale(scale)  # the levels' losses span orders of magnitude
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
