"""The kernels' goals read off a results folder: each Triton row of the loss and pooling benchmarks at the default
launch setting against its targets (``goals.json``: benchmark -> [goal, row field, least value]), and the fastest
launch setting per loss case and per swept kernel beside the default. Speedups compare paths under the same timing.

``python -m benchmarks.goals RESULTS_DIR`` prints the table and writes ``RESULTS_DIR/goals.md``."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

GOALS = json.loads((Path(__file__).parent / "goals.json").read_text())


def _rows(folder: Path, name: str) -> list[dict]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def _case(row: dict) -> str:
    return row.get("case") or row["shape"]


def goal_lines(folder: Path) -> list[str]:
    """A line per goal of each row of the Triton path at its default setting (``triton``, ``triton graph``)."""
    return [f"| {bench} | {_case(row)} | {row['path']} | {goal} | {row[field]:.2f} | {target:.2f} | "
            f"{'met' if row[field] >= target else 'missed'} |"
            for bench, goals in GOALS.items() for row in _rows(folder, bench)
            if row["path"] in ("triton", "triton graph") for goal, field, target in goals if row.get(field) is not None]


def fastest_launch_lines(folder: Path) -> list[str]:
    """Per loss case and timing, the fastest Triton path against the default (plain ``triton``); per swept kernel,
    the fastest setting against the default (a case's first) by the mean of its rounds, among those timed in every
    round (one timed once would win by one lucky time)."""
    lines, by_case, sweeps = [], {}, {}
    for row in _rows(folder, "masked_loss"):
        if row["path"] == "triton" or row["path"].startswith("triton "):
            by_case.setdefault((_case(row), "graph" if row["path"].endswith(" graph") else "caller"), []).append(row)
    for (case, timing), rows in by_case.items():
        fastest = min(rows, key=lambda r: r["ms"])
        default = next((f"{r['ms']:.3f} ms" for r in rows if r["path"] in ("triton", "triton graph")), "-")
        goals = ", ".join(f"{fastest[field]:.2f} {goal}" for goal, field, _ in GOALS["masked_loss"]
                          if fastest.get(field) is not None)
        lines.append(f"| masked_loss | {case} ({timing} time) | {fastest['path']} | {fastest['ms']:.3f} ms ({goals}) "
                     f"| {default} |")
    for row in _rows(folder, "sweep_launch"):
        sweeps.setdefault(_case(row), {}).setdefault(row["path"], []).append(row)
    for case, by_setting in sweeps.items():
        most = max(len(rows) for rows in by_setting.values())
        fastest = min((s for s, rows in by_setting.items() if len(rows) == most), key=lambda s: _mean(by_setting[s]))
        frac = statistics.mean(r["frac_copy"] for r in by_setting[fastest])
        lines.append(f"| sweep | {case} | {fastest} | {_rounds(by_setting[fastest])} ({frac:.0%} of copy) "
                     f"| {_rounds(next(iter(by_setting.values())))} |")
    return lines


def _mean(rows: list[dict]) -> float:
    return statistics.mean(r["ms"] for r in rows)


def _rounds(rows: list[dict]) -> str:
    """A setting's mean time, each round's after it: ``0.080 ms (0.103 / 0.056)``."""
    each = " (" + " / ".join(f"{r['ms']:.3f}" for r in rows) + ")" if len(rows) > 1 else ""
    return f"{_mean(rows):.3f} ms{each}" if rows else "-"


def report(folder: Path) -> str:
    goals, launches = goal_lines(folder), fastest_launch_lines(folder)
    return "\n".join([
        f"Goals of the Triton rows in {folder}", "",
        "| benchmark | case | path | goal | measured | target | |", "|---|---|---|---|---:|---:|---|",
        *(goals or ["| (no Triton rows) | | | | | | |"]), "",
        "Fastest launch settings", "", "| where | case | fastest | time | default |", "|---|---|---|---|---|",
        *(launches or ["| (no rows) | | | | |"]), ""])


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
