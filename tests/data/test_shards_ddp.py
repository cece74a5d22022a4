"""DDP (gloo, 2 processes, started by torchrun) trains on shards, each rank reading its own rows of every
global batch: disjoint slots, together the whole batch. Run with ``pytest -m distributed``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from video_files import write_video

from hjepa_fast.data.shards import write_shards
from hjepa_fast.train.distributed import free_port

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("ddp_shards_worker.py")
BATCH, STEPS = 4, 3


def test_ddp_on_shards_completes_and_ranks_read_disjoint_slots(tmp_path: Path) -> None:
    for k in range(6):
        (tmp_path / "videos" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        write_video(tmp_path / "videos" / f"c{k % 2}" / f"v{k}.mp4", 20, "mpeg4")
    write_shards(str(tmp_path / "videos"), str(tmp_path / "shards"), shard_bytes=5_000)
    overrides = [
        "data.dataset=video_folder", f"data.root={tmp_path / 'shards'}", "model.in_chans=3", "data.frames=16",
        "data.augment=true", "model.img_size=24", "model.patch_size=8", "model.encoder_dims=[32,32,32]",
        "model.encoder_depths=[1,1,1]", "model.encoder_heads=[2,2,2]", "model.predictor_dims=[16,16,16]",
        "model.predictor_depths=[1,1,1]", "model.predictor_heads=[2,2,2]", "masks.min_keep=4",
        f"train.batch_size={BATCH}", f"train.steps={STEPS}", "train.threads=1", "train.engine=ddp",
        f"train.out_dir={tmp_path}", "train.run_name=ddp",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(WORKER), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()
    keys = {rank: [json.loads(line) for line in (tmp_path / f"keys-{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    for step in range(STEPS):
        slots = {rank: {k[2] for k in keys[rank] if k[1] == step} for rank in (0, 1)}
        assert len(slots[0]) == len(slots[1]) == BATCH // 2 and not slots[0] & slots[1]
        assert slots[0] | slots[1] == set(range(BATCH))
