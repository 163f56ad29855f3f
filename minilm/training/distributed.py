"""Data-parallel training helpers: torchrun environment, process group, sharding, reductions.

    torchrun --nproc_per_node 8 train.py --config gpt2                      # one machine, 8 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 train.py ...

Every rank holds a full copy of the model (DDP). One optimizer step consumes `grad_accum` global
micro-batches; rank r takes the micro-batches r, r + world, r + 2 world, ..., so the global batch
(batch_size * grad_accum sequences) and the data it sees do not depend on how many processes share
it. DDP averages gradients over ranks during the last micro-batch's backward (earlier ones run
under `no_sync`, so the all-reduce happens once per step). Rank 0 logs, evaluates and checkpoints.
NCCL is the backend on GPUs, gloo on CPUs. Without torchrun's environment everything here is a
no-op for a single process.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def micro_batches(self, grad_accum: int) -> range:
        """The global micro-batch indices this rank computes in each optimizer step."""
        if grad_accum % self.world_size:
            suggestion = -(-grad_accum // self.world_size) * self.world_size  # round up
            raise ValueError(f"grad_accum ({grad_accum}) must be a multiple of the number of processes "
                             f"({self.world_size}); use --grad_accum {suggestion}")
        return range(self.rank, grad_accum, self.world_size)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), or stay single."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: float, info: DistInfo, device) -> float:
    """Sum a Python number over ranks (e.g. the loss tokens of this step, for exact normalization)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


def broadcast_flag(flag: bool, info: DistInfo, device) -> bool:
    """Rank 0's decision (e.g. "stop early") delivered to every rank, so all leave the loop together."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def sync_context(model, sync: bool):
    """`model.no_sync()` for a DDP model on a micro-batch that should not all-reduce yet."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()
