"""Every benchmark in one command, each in its own process, into one results folder; then one table of every row
(``summary.md``) and ``summary.json`` (device, versions, each benchmark's status, wall time and rows). ``--budget S``
spreads S seconds over the benchmarks by weight (``cases.yaml``)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import CASES, DEFAULT_OUT, cli, details, device_info, row_label

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = CASES["run"]["benchmarks"]


def run_one(name: str, args: argparse.Namespace, out: Path, timeout: float | None) -> dict:
    """Run one benchmark (its output streams through): status, wall time, command."""
    module, *extra = BENCHMARKS[name][2:] or [f"bench_{name}"]
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *extra, "--out", str(out), "--device", args.device]
    cmd += ["--quick"] if args.quick else []
    if timeout is not None and BENCHMARKS[name][1]:
        cmd += ["--deadline", f"{max(timeout * 0.7, 1.0):.0f}"]  # room left to finish the last measurement
    print(f"\n=== {name}: {' '.join(cmd[1:])}" + (f" (timeout {timeout:.0f} s)" if timeout else ""), flush=True)
    start = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, timeout=timeout).returncode
        status = "ok" if rc == 0 else f"exit {rc}"
    except subprocess.TimeoutExpired:
        status = "timeout"
    return {"status": status, "wall_s": time.perf_counter() - start, "command": " ".join(["python", *cmd[1:]])}


def table(results: dict[str, dict]) -> str:
    """One markdown table of every row with the ``harness.DETAILS`` it has; a benchmark that failed or measured
    nothing gets a line that says so."""
    lines = ["| benchmark | case | path | median ms | IQR ms | details |", "|---|---|---|---:|---:|---|"]
    for name, res in results.items():
        for r in res.get("rows", []):
            lines.append(f"| {name} | {' | '.join(row_label(r))} | {r['ms']:.3f} | {r['ms_q25']:.3f}-{r['ms_q75']:.3f} "
                         f"| {details(r)} |")
        if res["status"] != "ok":
            lines.append(f"| {name} | ({res['status']}) | | | | |")
        elif not res.get("rows"):  # ran, measured nothing: say why (a benchmark that needs CUDA, on a CPU)
            lines += [f"| {name} | (skipped: {note}) | | | | |" for note in res.get("skipped") or ["no rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli(__doc__)
    parser.prog = "python -m benchmarks.run"
    parser.set_defaults(out=None)  # benchmarks/results/<date>-<device>
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all benchmarks together")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    info = device_info(device)
    out = (args.out or DEFAULT_OUT / f"{time.strftime('%Y%m%d-%H%M%S')}-{device.type}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    command = " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])
    header = (f"{info.get('name')} ({args.device}), torch {info['torch']}, triton {info.get('triton', '-')}, "
              f"{info['date']}; command: {command}")
    print(f"{header}; results in {out}", flush=True)
    started, results = time.perf_counter(), {}
    for i, name in enumerate(names):
        timeout, weights = None, [BENCHMARKS[n][0] for n in names[i:]]
        if args.budget is not None:
            timeout = max((args.budget - (time.perf_counter() - started)) * weights[0] / sum(weights), 10.0)
        launched = time.time()
        results[name] = run_one(name, args, out, timeout)
        path = out / f"{name}.json"
        if path.is_file() and path.stat().st_mtime >= launched:  # written by this run, not an earlier one
            data = json.loads(path.read_text())
            results[name] |= {"rows": data.get("rows", []), "skipped": data.get("skipped", [])}
    summary = table(results)
    print(f"\n{header}\n{summary}")
    (out / "summary.md").write_text(f"{header}\n\n{summary}\n")
    (out / "summary.json").write_text(json.dumps({**info, "args": vars(args) | {"out": str(out)},
                                                  "benchmarks": results}, indent=2, default=str))
    print(f"\nwrote {out / 'summary.md'}, {out / 'summary.json'} and each benchmark's JSON in {out}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
