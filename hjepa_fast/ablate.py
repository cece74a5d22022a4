"""``hjepa ablate``: train and evaluate the variants of the H-JEPA ablation table, each over several
seeds. A variant is a list of ordinary config overrides on top of the base config (no code forks); the
result is one row per variant and seed, and a Markdown table of mean ± std over seeds. It composes
training and evaluation, so it sits above ``train/`` and ``eval/`` (DESIGN.md)."""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hjepa_fast.builders import build_model
from hjepa_fast.checkpoint import load_model_state
from hjepa_fast.config import Config, ConfigError, load_config
from hjepa_fast.eval.probe import evaluate_model
from hjepa_fast.runs import load_run_state, pick_device
from hjepa_fast.train.trainer import train

COLUMNS = {  # row key -> table header
    "err_short": "error h=1 (px)", "err_long": "error h=max (px)", "mean_state_long": "mean-state h=max (px)",
    "copy_last_long": "copy-last h=max (px)", "err_top": "top level, farthest (px)",
    "spread_l1": "prediction spread L1", "rankme_top": "RankMe top",
}


def variants(cfg: Config) -> dict[str, list[str]]:
    """``{name: overrides}``: the base config, then each ablation that differs from it."""
    m, L = cfg.model, cfg.model.levels
    out: dict[str, list[str]] = {"base": []}
    out.update({f"levels={k}": [f"model.levels={k}"] for k in range(1, L)})
    if m.topdown != "none":
        out["topdown=none"] = ["model.topdown=none"]
        if L > 1:
            other = "context" if m.topdown_source == "prediction" else "prediction"
            out[f"topdown_source={other}"] = [f"model.topdown_source={other}"]
    if any(s != 1 for s in m.temporal_strides):
        out["strides=1"] = [f"model.temporal_strides={[1] * L}"]
    out.update({f"abstraction={a}": [f"model.abstraction={a}"]
                for a in ("average", "conv", "attention") if L > 1 and a != m.abstraction})
    if L > 1 and not m.share_encoders and cfg.train.engine != "fsdp":  # sharing needs level 1's shapes everywhere
        out["share_encoders=true"] = ["model.share_encoders=true", *(
            f"model.{k}={[getattr(m, k)[0]] * L}" for k in ("encoder_dims", "encoder_heads", "encoder_depths")
            if len(set(getattr(m, k))) > 1)]
    out.update({f"weighting={w}": [f"loss.weighting={w}"]
                for w in ("uniform", "increasing", "curriculum", "uncertainty") if L > 1 and w != cfg.loss.weighting})
    loss, zeros = cfg.loss, [0.0] * L
    if any(w > 0 for w in (*loss.variance_weight, *loss.covariance_weight, *loss.sigreg_weight)):
        out["anti_collapse=off"] = [f"loss.{k}={zeros}" for k in ("variance_weight", "covariance_weight",
                                                                  "sigreg_weight")] + ["train.target_encoder=ema"]
    if cfg.train.target_encoder == "online":
        out["target_encoder=ema"] = ["train.target_encoder=ema"]
    else:
        out["ema=off"] = [f"train.ema_tau_base={zeros}", f"train.ema_tau_end={zeros}"]
    if m.predictor_init != "trunc_normal":
        out["predictor_init=trunc_normal"] = ["model.predictor_init=trunc_normal"]
    if cfg.data.dataset == "moving_digits" and (cfg.data.digits > 1 or cfg.data.background != "black"):
        out["data=one_digit_on_black"] = ["data.digits=1", "data.background=black"]
    return out


def budget_overrides(cfg: Config, budget: float) -> list[str]:
    """Scale training steps (with warm-up and curriculum) and probe clips by ``budget``."""
    if budget <= 0:
        raise ConfigError(f"--budget must be > 0, got {budget}")
    t, e = cfg.train, cfg.eval
    steps = max(2, round(t.steps * budget))
    return [f"train.steps={steps}", f"train.warmup_steps={min(steps - 1, round(t.warmup_steps * budget))}",
            f"loss.curriculum_steps={max(1, round(cfg.loss.curriculum_steps * budget))}",
            f"train.log_every={min(t.log_every, steps)}", f"train.ckpt_every={steps}",
            f"eval.train_clips={max(32, round(e.train_clips * budget))}",
            f"eval.val_clips={max(16, round(e.val_clips * budget))}"]


def run_one(cfg: Config, run_dir: Path) -> dict:
    """Train one variant and seed in ``run_dir``, then evaluate its final checkpoint (no random baseline)."""
    start = time.perf_counter()
    result = train(cfg, run_dir=run_dir, progress=False)
    device = pick_device(cfg)
    model = build_model(cfg).to(device)
    state = load_run_state(run_dir)  # any engine's checkpoint (train.engine may be an override)
    load_model_state(model, state, state["path"])
    ev = evaluate_model(model, cfg, device)
    level1, top = ev["horizon"]["level1"], ev["horizon"][f"level{cfg.model.levels}"]
    return {"steps": result["step"], "final_loss": result["losses"][-1]["loss"],
            "err_short": level1["error"][0], "err_long": level1["error"][-1],
            "mean_state_long": level1["mean_state"][-1], "copy_last_long": level1["copy_last"][-1],
            "err_top": top["error"][-1], "spread_l1": level1["spread_ratio"],
            "rankme_top": ev["collapse"][f"level{cfg.model.levels}"]["rankme"],
            "collapsed": [name for name, c in ev["collapse"].items() if c["collapsed"]],
            "probe": ev["probe"]["all"], "horizon": ev["horizon"], "seconds": time.perf_counter() - start}


def ablate(config: str, seeds: int = 3, budget: float = 1.0, names: list[str] | None = None,
           out: str | None = None, overrides: list[str] = (), progress: bool = True) -> dict:
    """Run every variant (or those in ``names``) for seeds ``0 .. seeds-1``; write ``ablate.json``,
    ``ablate.md`` and ``ablate.png`` in ``out``. Returns ``{"rows", "table", ...}``."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    base = load_config(config, overrides)
    table = variants(base)
    unknown = [n for n in names or [] if n not in table]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}; variants of this config: {', '.join(table)}")
    chosen = {n: table[n] for n in (names or table)}
    scale = budget_overrides(base, budget)
    out_dir = Path(out or Path(base.train.out_dir) / time.strftime("ablate-%Y%m%d-%H%M%S"))
    cfgs = {(n, s): load_config(config, [*overrides, *scale, *ov, f"train.seed={s}"])  # refuse bad ones up front
            for n, ov in chosen.items() for s in range(seeds)}
    existing = [out_dir / n.replace("=", "-") for n in chosen if (out_dir / n.replace("=", "-")).exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists: give another --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"command": {"config": config, "seeds": seeds, "budget": budget, "overrides": list(overrides)},
              "date": time.strftime("%Y-%m-%d %H:%M"), "device": describe_device(pick_device(base)),
              "variants": chosen, "rows": []}
    for (name, seed), cfg in cfgs.items():
        run_dir = out_dir / name.replace("=", "-") / f"seed{seed}"
        run_dir.mkdir(parents=True)
        row = {"variant": name, "seed": seed, **run_one(cfg, run_dir)}
        report["rows"].append(row)
        if progress:
            print(f"{name:<24} seed {seed}: error h=1 {row['err_short']:.2f} px, h=max {row['err_long']:.2f} px, "
                  f"probe {row['probe']}, {row['seconds']:.0f} s", flush=True)
        (out_dir / "ablate.json").write_text(json.dumps(report, indent=2))
    report["table"] = markdown_table(report)
    (out_dir / "ablate.json").write_text(json.dumps(report, indent=2))
    (out_dir / "ablate.md").write_text(report["table"] + "\n")
    plot_ablation(report["rows"], out_dir / "ablate.png")
    report["out_dir"] = str(out_dir)
    return report


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _mean_std(values: list[float]) -> str:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return f"{np.mean(values):.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")


def markdown_table(report: dict) -> str:
    """Mean ± std over seeds per variant: future-state errors, RankMe, probe accuracy (all levels)."""
    rows = report["rows"]
    labels = list(rows[0]["probe"])
    header = ["variant", "seeds", *COLUMNS.values(), *(f"probe {label}" for label in labels)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        cells = [name, str(len(mine)), *(_mean_std([r[k] for r in mine]) for k in COLUMNS),
                 *(_mean_std([r["probe"][label] for r in mine]) for label in labels)]
        lines.append("| " + " | ".join(cells) + " |")
    c = report["command"]
    lines += ["", f"`hjepa ablate --config {c['config']} --seeds {c['seeds']} --budget {c['budget']}"
              + "".join(f" {o}" for o in c["overrides"]) + f"`, {report['date']}, {report['device']}; "
              f"{rows[0]['steps']} training steps per run. Errors: digit-centre position read by a "
              "ridge probe on the target features' token grid (at most 4 x 4 cells per step), applied to the "
              "predicted features after removing their mean offset "
              "measured on training clips (level 1, one and the most level-1 steps ahead; the top level at its "
              "farthest step); mean-state: the context-blind guess; prediction spread: clip-to-clip std of "
              "level 1's predictions over its targets' (0: the predictor ignores its input)."]
    return "\n".join(lines)


def plot_ablation(rows: list[dict], path: Path) -> Path:
    """Left: level-1 future-state error against frames ahead per variant (mean over seeds); right: probe
    accuracy (all levels) per variant and label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in rows))
    labels = list(rows[0]["probe"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        curve = mine[0]["horizon"]["level1"]
        left.plot(curve["frames_ahead"], np.mean([r["horizon"]["level1"]["error"] for r in mine], axis=0),
                  marker="o", label=name)
    left.set_xlabel("frames ahead of the context")
    left.set_ylabel("level-1 future-state error (px)")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        accs = [[r["probe"][label] for r in rows if r["variant"] == n] for n in names]
        right.bar(np.arange(len(names)) + i * width, [np.mean(a) for a in accs], width,
                  yerr=[np.std(a) for a in accs], label=label)
    right.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=7)
    right.set_ylabel("linear-probe accuracy (all levels)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
