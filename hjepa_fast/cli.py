"""The ``hjepa`` command: train, eval, export, plan, info, bench, ..."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hjepa_fast.config import ConfigError
from hjepa_fast.errors import UserError

USER_ERRORS = (ConfigError, UserError, FileNotFoundError, FileExistsError)
TRUST_HELP = ("also load checkpoints that a safe load refuses (those of older versions): runs any code a "
              "checkpoint holds, so only for files you wrote yourself")


def _trust_checkpoints(args: argparse.Namespace) -> None:
    """``--trust-checkpoint``: the opt-in, through the environment so that every rank and loader sees it."""
    if args.trust_checkpoint:
        from hjepa_fast.checkpoint import TRUST_ENV

        os.environ[TRUST_ENV] = "1"


def _train(args: argparse.Namespace) -> None:
    _trust_checkpoints(args)
    from hjepa_fast.config import load_config
    from hjepa_fast.runs import resume_config
    from hjepa_fast.train.trainer import train

    run_dir = Path(args.resume) if args.resume else None
    # overrides apply to --config, else (resuming) to the run's own config, else to the defaults
    saved = run_dir / "config.yaml" if run_dir is not None and (run_dir / "config.yaml").is_file() else None
    requested = load_config(args.config or saved, args.overrides) if args.config or args.overrides else None
    if run_dir is not None:
        cfg = resume_config(run_dir, requested)
    else:
        if requested is None:
            raise ConfigError("give --config FILE (e.g. configs/tiny_cpu.yaml) or --resume RUN_DIR")
        cfg = requested
    result = train(cfg, run_dir=run_dir, resume=run_dir is not None, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under a launcher: rank 0 speaks
        return
    if result["finished"]:
        print(f"run folder: {result['run_dir']} already finished at step {result['step']} (train.steps); "
              f"to train on: hjepa train --resume {result['run_dir']} train.steps=N")
        return
    last = result["losses"][-1]
    print(f"run folder: {result['run_dir']}  (step {result['step']}, loss {last['loss']:.4f})")


def _eval(args: argparse.Namespace) -> None:
    _trust_checkpoints(args)
    from hjepa_fast.eval.probe import evaluate_run, format_table

    settings = {"labels": args.labels, "horizon": args.horizon, "train_clips": args.train_clips,
                "val_clips": args.val_clips, "context_fraction": args.context_fraction}
    result = evaluate_run(args.run, {k: v for k, v in settings.items() if v is not None},
                          progress=not args.no_progress)
    print(format_table(result))
    run = Path(args.run)
    print(f"written: {run / 'eval.json'}" + ("" if result["horizon"] is None else f", {run / 'horizon.png'}"))


def _export(args: argparse.Namespace) -> None:
    _trust_checkpoints(args)
    from hjepa_fast.export import export_run

    out = export_run(args.run, args.out, fmt=args.format, force=args.force)
    print(f"written: {out}")


def _ablate(args: argparse.Namespace) -> None:
    from hjepa_fast.ablate import ablate

    report = ablate(args.config, args.seeds, args.budget, args.variants, args.out, args.overrides)
    print(report["table"])
    print(f"results: {report['out_dir']} (ablate.md, ablate.json, ablate.png)")


# the optional packages a run may use, by distribution name (read from the installed metadata, not imported)
OPTIONAL_PACKAGES = ("flash-attn", "xformers", "deepspeed", "tensorboard", "av")


def _installed(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _info(args: argparse.Namespace) -> None:
    import torch

    import hjepa_fast
    from hjepa_fast.model.attention import resolve_backend

    print(f"hjepa_fast {hjepa_fast.__version__}, torch {torch.__version__}, triton {_installed('triton')}")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        print(f"cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name()} (sm_{major}{minor}), "
              f"CUDA {torch.version.cuda}")
    else:
        print("cuda: not available (the Triton kernels run on CUDA tensors only; CPU runs use the PyTorch paths)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1: Triton kernels run in the interpreter (slow; for tests)")
    print(f"attention backend (auto, unmasked CUDA attention): {resolve_backend('auto')}")
    print("optional: " + ", ".join(f"{name} {_installed(name)}" for name in OPTIONAL_PACKAGES))
    print(f"CPU threads: {torch.get_num_threads()}")


BENCHMARKS_MISSING = ("hjepa bench runs the benchmarks of a source checkout (benchmarks/ is not installed with "
                      "the package): run it from the checkout's root, or put the checkout on PYTHONPATH")


def _benchmark_runner():
    """``benchmarks.run.main``, an optional import: ``benchmarks/`` belongs to the source checkout, not to
    the installed package. It is found as ``python -m benchmarks.run`` finds it: on the import path, with
    the current directory first; where it is not there, the user gets ``BENCHMARKS_MISSING``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        from benchmarks.run import main
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks", "benchmarks.run"):
            raise  # a dependency of the benchmarks is missing: its own message says which
        raise UserError(BENCHMARKS_MISSING) from None
    return main


def _bench(args: argparse.Namespace) -> None:
    run_benchmarks = _benchmark_runner()
    argv = [*(["--quick"] if args.quick else []), *(["--out", args.out] if args.out else []),
            *(["--device", args.device] if args.device else []),
            *(["--budget", str(args.budget)] if args.budget else []), *(["--only", *args.only] if args.only else [])]
    if run_benchmarks(argv):
        raise SystemExit(1)


def _collect(args: argparse.Namespace) -> None:
    from hjepa_fast.envs.collect import collect

    out = collect(args.env, args.out or f"runs/rollouts/{args.env}", args.episodes, args.steps, args.seed)
    print(f"rollouts: {out}  ({args.episodes} episodes x {args.steps} steps of {args.env})")


def _plan(args: argparse.Namespace) -> None:
    _trust_checkpoints(args)
    from hjepa_fast.plan.evaluate import evaluate_planning, format_table

    if args.fit_distance:
        from hjepa_fast.plan.evaluate import load_world
        from hjepa_fast.plan.fit_distance import fit_distance, format_fit

        print(format_fit(fit_distance(args.run, args.env, load_world(args.run, args.env)[0], steps=args.fit_steps)))
        return
    if args.diagnose:
        from hjepa_fast.plan.diagnose import diagnose, format_diagnosis
        from hjepa_fast.plan.energy import load_energy
        from hjepa_fast.plan.evaluate import load_world

        wm, env = load_world(args.run, args.env)  # the latent energy is always diagnosed; the learned one on request
        learned = load_energy("learned", args.run, args.env, wm) if args.energy == "learned" else None
        result = diagnose(wm, env, tasks=args.tasks, candidates=args.samples, learned=learned)
        out = Path(args.out or Path(args.run) / f"plan-{args.env}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "diagnose.json").write_text(json.dumps(result, indent=1))
        print(format_diagnosis(result) + f"\nwritten: {out / 'diagnose.json'}")
        return

    result = evaluate_planning(args.run, args.env, tasks=args.tasks, seeds=args.seeds, planner=args.planner,
                               levels=args.levels, samples=args.samples, iterations=args.iterations,
                               out=args.out, match_flops=args.match_flops,
                               energy_frames=args.energy_frames, energy_path=args.energy_path, oracle=args.oracle,
                               energy=args.energy)
    print(format_table(result))


def _shard(args: argparse.Namespace) -> None:
    from hjepa_fast.data.shards import write_shards

    if not Path(args.src).is_dir():
        raise FileNotFoundError(f"no video folder at {args.src}")
    for index in write_shards(args.src, args.dst, int(args.shard_mb * 2**20), args.gop):
        print(f"written: {index}")


def _one_line(error: Exception) -> str:
    """The message of a user error; one raised in a data loader worker arrives with the worker's traceback
    in its text, and only its last line (the original message) is for the user."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hjepa", description="Hierarchical JEPA world models")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model (or resume a run)")
    p.add_argument("--config", help="YAML config, e.g. configs/tiny_cpu.yaml")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.add_argument("overrides", nargs="*", help="section.name=value, e.g. model.levels=2 train.batch_size=16")
    p.set_defaults(func=_train)
    p = sub.add_parser("eval", help="linear probes per level, trained vs random initialisation")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--labels", nargs="+", help="labels to probe (default: every label of the data set)")
    p.add_argument("--horizon", type=int, help="future-state error up to this many level-1 steps (default: all)")
    p.add_argument("--context-fraction", type=float, help="part of the clip the predictors see (default 0.5)")
    p.add_argument("--train-clips", type=int, help="clips to fit the probes on (default eval.train_clips)")
    p.add_argument("--val-clips", type=int, help="held-out clips to score them on (default eval.val_clips)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=_eval)
    p = sub.add_parser("export", help="a run's encoders (online and EMA target, every level) as one "
                                      "framework-free file (docs/checkpoints.md)")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder of any engine (single, ddp, fsdp, deepspeed)")
    p.add_argument("out", metavar="OUT", help="the file to write, e.g. encoders.safetensors")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "pt"],
                   help="safetensors (default), or pt: a torch.save of the same tensors (loads with weights_only)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=_export)
    p = sub.add_parser("ablate", help="the ablation table: variants x seeds, trained and evaluated")
    p.add_argument("--config", required=True, help="the base config, e.g. configs/tiny_cpu.yaml")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=1.0,
                   help="scale of training steps and probe clips (1: the config's; tiny_cpu: 3000 steps, "
                        "~6 min a run alone on 2 cores)")
    p.add_argument("--variants", nargs="+", help="run only these (base, levels=1, topdown=none, strides=1, ...)")
    p.add_argument("--out", help="results folder (default TRAIN_OUT_DIR/ablate-<time>)")
    p.add_argument("overrides", nargs="*", help="section.name=value applied to every variant")
    p.set_defaults(func=_ablate)
    p = sub.add_parser("collect", help="record random-exploration rollouts of an environment (a data set)")
    p.add_argument("--env", required=True, help="panworld, tworooms, fourrooms or pusht")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--steps", type=int, default=48, help="actions per episode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder (default runs/rollouts/ENV)")
    p.set_defaults(func=_collect)
    p = sub.add_parser("plan", help="plan with a trained world model: success rate, time and FLOPs per episode")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--env", required=True, help="panworld, tworooms, fourrooms or pusht")
    p.add_argument("--tasks", type=int, default=50, help="fixed start/goal tasks")
    p.add_argument("--seeds", type=int, default=3, help="planner seeds (mean +- s.e. over them)")
    p.add_argument("--planner", default="cem", choices=["cem", "mppi", "grad"])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2],
                   help="1: flat (level 1 only); K: hierarchical over the lowest K levels; several: one row each")
    p.add_argument("--samples", type=int, default=64, help="candidates per planner iteration")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--match-flops", action="store_true",
                   help="give hierarchical agents the candidates that match a flat action's FLOPs (equal budget)")
    p.add_argument("--energy-frames", type=int, default=None, metavar="K",
                   help="compare the prediction K frames ahead with the goal (default: the last imagined frame)")
    p.add_argument("--energy-path", action="store_true",
                   help="average the distance to the goal over every imagined step up to there (a running cost)")
    p.add_argument("--oracle", action="store_true",
                   help="one more row per --levels entry: that agent with the environment itself as the world model "
                        "(its ceiling)")
    p.add_argument("--energy", default="latent", choices=["latent", "learned"],
                   help="latent: L1 distance of tokens to the goal's; learned: the temporal distance heads of "
                        "--fit-distance (--diagnose then reports both)")
    p.add_argument("--diagnose", action="store_true",
                   help="instead of planning: does the model respond to actions, and does its energy rank outcomes")
    p.add_argument("--fit-distance", action="store_true",
                   help="instead of planning: fit a temporal distance head per level on the run's rollouts "
                        "(RUN_DIR/distance-ENV.pt), for --energy learned")
    p.add_argument("--fit-steps", type=int, default=2000, help="optimiser steps of --fit-distance per level")
    p.add_argument("--out", help="results folder (default RUN_DIR/plan-ENV)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=_plan)
    p = sub.add_parser("shard", help="pack a video folder into WebDataset tar shards with an index (docs/data.md)")
    p.add_argument("src", help="a video folder (with train/ and val/, or split by file when read)")
    p.add_argument("dst", help="the folder to write the shards and index.json to")
    p.add_argument("--shard-mb", type=float, default=1024, help="start a new shard past this size (MB)")
    p.add_argument("--gop", type=int, help="re-encode to H.264 with a keyframe at most every GOP frames")
    p.set_defaults(func=_shard)
    p = sub.add_parser("info", help="versions, device, attention backend")
    p.set_defaults(func=_info)
    p = sub.add_parser("bench", help="every benchmark: one table and JSON in one folder (benchmarks/run.py)")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, ~1-2 min on CPU)")
    p.add_argument("--out", help="results folder (default benchmarks/results/<date>-<device>)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--budget", type=float, help="seconds for all benchmarks together")
    p.add_argument("--only", nargs="+", help="masked_loss, ema, temporal_pool, train_step, scaling, planning, "
                                             "host_overhead, op_batch")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # the deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same
    argv = sys.argv[1:] if argv is None else argv
    argv = [a for i, a in enumerate(argv) if not a.startswith(("--local_rank", "--local-rank"))
            and not (i > 0 and argv[i - 1] in ("--local_rank", "--local-rank"))]
    # overrides may come before or after the flags: collect the ones argparse left over
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or args.command not in ("train", "ablate")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"hjepa: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
