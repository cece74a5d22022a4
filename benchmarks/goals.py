"""The kernels' GPU goals read off a results folder: the Triton rows of the masked-loss and temporal-pool
benchmarks (at the default launch setting) against their goals (issue 3, the loss: 3x the eager reference
and 85% of the copy bandwidth on the bytes it moves under autograd; issue 5, the pooling: 3x eager and 70%
of copy), and which launch setting was fastest, in the loss benchmark (through autograd, with that row's
goal values) and in the sweep (bare kernels); and, per op and batch, the caller's time against the device's
(``bench_op_batch``).

Speedups compare paths under the same timing (``<path> graph`` rows against ``eager graph``). It states
what was measured; it does not decide what a goal means (which shapes count, caller's or device time).

``python -m benchmarks.goals RESULTS_DIR`` prints the table and writes ``RESULTS_DIR/goals.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# benchmark -> (goal name, row field, target), each checked on every Triton row
GOALS = {
    "masked_loss": [("3x eager", "speedup_vs_eager", 3.0),
                    ("85% of copy (autograd bytes)", "frac_copy_autograd", 0.85)],
    "temporal_pool": [("3x eager", "speedup_vs_eager", 3.0), ("70% of copy", "frac_copy", 0.70)],
}


def _rows(folder: Path, name: str) -> list[dict]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def _is_triton(path: str) -> bool:
    return path == "triton" or path.startswith("triton ")


def goal_lines(folder: Path) -> list[str]:
    """One line per goal of each row of the Triton path at its default launch setting (``triton``, ``triton
    graph``): case, path, measured value, target, met or not. The other settings' rows are summed up by
    ``fastest_launch_lines``."""
    lines = []
    for bench, goals in GOALS.items():
        for row in _rows(folder, bench):
            if row["path"] not in ("triton", "triton graph"):
                continue
            case = row.get("case") or row["shape"]
            for goal, field, target in goals:
                value = row.get(field)
                if value is not None:
                    verdict = "met" if value >= target else "missed"
                    lines.append(f"| {bench} | {case} | {row['path']} | {goal} | {value:.2f} | {target:.2f} "
                                 f"| {verdict} |")
    return lines


def fastest_launch_lines(folder: Path) -> list[str]:
    """Per loss case and timing, the fastest Triton path (the default is plain ``triton``); per swept kernel,
    the fastest setting against the default, by the mean of its rounds among the settings timed in every
    round (the sweep times the default and its fastest settings twice), every round's time beside it."""
    lines, by_case = [], {}
    for row in _rows(folder, "masked_loss"):
        if _is_triton(row["path"]):
            timing = "graph" if row["path"].endswith(" graph") else "caller"
            by_case.setdefault((row["shape"], timing), []).append(row)
    for (case, timing), rows in by_case.items():
        fastest = min(rows, key=lambda r: r["ms"])
        default = _ms(next((r["ms"] for r in rows if r["path"] in ("triton", "triton graph")), None))
        goals = ", ".join(f"{fastest[field]:.2f} {goal}" for goal, field, _ in GOALS["masked_loss"]
                          if fastest.get(field) is not None)
        lines.append(f"| masked_loss | {case} ({timing} time) | {fastest['path']} | {fastest['ms']:.3f} ms "
                     f"({goals}) | {default} |")
    sweeps: dict[str, dict[str, list[dict]]] = {}
    for row in _rows(folder, "sweep_launch"):
        sweeps.setdefault(row["kernel"], {}).setdefault(row["path"], []).append(row)
    for kernel, by_setting in sweeps.items():
        # among the settings timed in the most rounds (the default and the sweep's fastest, timed again): a
        # setting timed once would win by its one lucky time against the others' means
        most = max(len(rows) for rows in by_setting.values())
        confirmed = [setting for setting, rows in by_setting.items() if len(rows) == most]
        fastest = min(confirmed, key=lambda setting: _mean_ms(by_setting[setting]))
        frac = statistics.mean(r["frac_copy"] for r in by_setting[fastest])
        default = next((rows for rows in by_setting.values() if rows[0].get("default")), [])
        lines.append(f"| sweep | {kernel} | {fastest} | {_rounds(by_setting[fastest])} ({frac:.0%} of copy) "
                     f"| {_rounds(default)} |")
    return lines


def batch_lines(folder: Path) -> list[str]:
    """Per op and batch (``bench_op_batch``): the caller's and the device's time and fraction of copy, and the
    gap between them."""
    by_case: dict[tuple[str, int], dict[str, dict]] = {}
    for row in _rows(folder, "op_batch"):
        by_case.setdefault((row["op"], row["B"]), {})[row["path"]] = row
    lines = []
    for (op, batch), paths in by_case.items():
        caller, graph = paths.get("triton"), paths.get("triton graph")
        cells = [f"{r['ms']:.3f} ms ({r['frac_copy']:.0%})" if r else "-" for r in (caller, graph)]
        gap = (caller or graph or {}).get("gap_ms")
        lines.append(f"| {op} | {batch} | {cells[0]} | {cells[1]} | {'-' if gap is None else f'{gap:.3f} ms'} |")
    return lines


def _mean_ms(rows: list[dict]) -> float:
    return statistics.mean(r["ms"] for r in rows)


def _rounds(rows: list[dict]) -> str:
    """A setting's time, the mean of its rounds, each round after it: ``0.080 ms (0.103 / 0.056)``."""
    if not rows:
        return "-"
    each = " (" + " / ".join(f"{r['ms']:.3f}" for r in rows) + ")" if len(rows) > 1 else ""
    return f"{_mean_ms(rows):.3f} ms{each}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def report(folder: Path) -> str:
    goals = goal_lines(folder)
    launches = fastest_launch_lines(folder)
    batches = batch_lines(folder)
    return "\n".join([
        f"Goals of the Triton rows in {folder}", "",
        "| benchmark | case | path | goal | measured | target | |", "|---|---|---|---|---:|---:|---|",
        *(goals or ["| (no Triton rows) | | | | | | |"]), "",
        "Fastest launch settings", "", "| where | case | fastest | time | default |", "|---|---|---|---|---|",
        *(launches or ["| (no rows) | | | | |"]), "",
        "Forward + backward by batch (fraction of copy)", "", "| op | B | caller | device (graph) | gap |",
        "|---|---:|---|---|---|", *(batches or ["| (no rows) | | | | |"]), ""])


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("folder", type=Path, help="a results folder (benchmarks.run --out, scripts/gpu_suite.sh)")
    args = cli.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"no results folder {args.folder}")
    text = report(args.folder)
    (args.folder / "goals.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
