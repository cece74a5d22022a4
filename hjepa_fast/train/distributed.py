"""Process groups and data sharding for multi-process runs (torchrun or the ``deepspeed`` launcher).

The data rule: step ``s`` has one *global* batch of ``train.batch_size`` clips and one set of masks, drawn
from (seed, step) exactly as a single-process run draws them; rank ``r`` of ``W`` takes rows
``[r*B/W, (r+1)*B/W)`` of both. The gradients averaged over ranks are then those of the global batch.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hjepa_fast.config import Config, ConfigError

MULTI_PROCESS_ENGINES = ("ddp", "fsdp", "deepspeed")


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when train() created the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(cfg: Config, device_type: str) -> DistInfo:
    """Join (or create) the process group an engine needs. Launchers set RANK/WORLD_SIZE/LOCAL_RANK/
    MASTER_ADDR/MASTER_PORT; without them a ddp/fsdp/deepspeed run is a group of one on a free port."""
    if cfg.train.engine not in MULTI_PROCESS_ENGINES:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"started with WORLD_SIZE={os.environ['WORLD_SIZE']} but train.engine="
                              f"{cfg.train.engine}: pick train.engine=ddp, fsdp or deepspeed")
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if info.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list:
    """``[obj of rank 0, ..., obj of rank W-1]`` on every rank."""
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``values`` over ranks (for logging: every rank holds the loss of its slice)."""
    if info.world == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / info.world


def local_batch(cfg: Config, info: DistInfo) -> tuple[int, int]:
    """(rows of the global batch this rank holds, micro-batch size); refuses a batch that does not split."""
    B, W, A = cfg.train.batch_size, info.world, cfg.train.grad_accumulation
    if B % (W * A):
        raise ConfigError(f"train.batch_size {B} must split evenly over {W} ranks x {A} micro-batches "
                          f"(train.grad_accumulation): pick a multiple of {W * A}")
    return B // W, B // (W * A)


def build_sharded_loader(cfg: Config, info: DistInfo, start_step: int = 0) -> torch.utils.data.DataLoader:
    """``builders.build_train_loader`` for rank ``info.rank`` of ``info.world``: this rank's rows of every
    global batch and of its masks (the single-process loader when the world is one)."""
    from .builders import build_train_loader

    local_batch(cfg, info)
    return build_train_loader(cfg, start_step=start_step, rank=info.rank, world=info.world)
