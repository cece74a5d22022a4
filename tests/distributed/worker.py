"""Entry point for the multi-process tests, started by torchrun: ``worker.py STOP_AT OVERRIDE...``.

Trains like ``hjepa train`` (``--resume RUN_DIR`` resumes), but when STOP_AT > 0 the data loader ends after
that step, so the run stops cleanly there and writes its checkpoint: an interrupted run to resume."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

from hjepa_fast.config import load_config
from hjepa_fast.train import trainer


def main(argv: list[str]) -> None:
    stop_at, args = int(argv[0]), argv[1:]
    resume = None
    if args[:1] == ["--resume"]:
        resume, args = Path(args[1]), args[2:]
    if stop_at > 0:
        real = trainer.distributed.build_sharded_loader

        def stopping(cfg, info, start_step=0):
            return itertools.islice(real(cfg, info, start_step=start_step), stop_at - start_step)

        trainer.distributed.build_sharded_loader = stopping
    cfg = load_config(None, args)
    if resume is not None:
        cfg = trainer.resume_config(resume, cfg)
        trainer.train(cfg, run_dir=resume, resume=True, progress=False)
    else:
        trainer.train(cfg, progress=False)


if __name__ == "__main__":
    main(sys.argv[1:])
