"""Started by torchrun from test_shards_ddp.py: ``ddp_shards_worker.py OVERRIDE...``. Trains like ``hjepa
train`` and appends every item key its process reads to ``keys-RANK.jsonl`` in the working folder."""
from __future__ import annotations

import json
import os
import sys

from hjepa_fast.config import load_config
from hjepa_fast.data.shards import VideoShards
from hjepa_fast.train import trainer

read = VideoShards.__getitem__


def recording(self: VideoShards, key: tuple[int, ...]) -> dict:
    with open(f"keys-{os.environ['RANK']}.jsonl", "a") as f:
        f.write(json.dumps(list(key)) + "\n")
    return read(self, key)


if __name__ == "__main__":
    VideoShards.__getitem__ = recording
    trainer.train(load_config(None, sys.argv[1:]), progress=False)
