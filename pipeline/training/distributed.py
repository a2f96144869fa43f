"""Multi-process training with PyTorch's own engine: DistributedDataParallel under torchrun.

One machine, N processes:   torchrun --standalone --nproc_per_node N -m pipeline.training.worker
Several machines (on each): torchrun --nnodes M --node_rank R --nproc_per_node N \\
                              --rdzv_backend c10d --rdzv_endpoint HOST:PORT -m pipeline.training.worker
`train.nproc_per_node > 1` makes the train stage launch the first form itself (worker.launch).

`train.batch_size` is the total batch of one optimiser step across all processes and
micro-batches, so results do not depend on how the work is split: every process draws the
same global batch indices and noise and takes its own slice (shard). Rank 0 alone logs,
samples and writes checkpoints and outputs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device_type: str) -> World:
    """Join the process group torchrun describes in the environment (a no-op when run alone)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def wrap(module: nn.Module, world: World, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """DDP-wrap a module (optionally converting BatchNorm to SyncBatchNorm, CUDA only)."""
    if not world.enabled:
        return module
    if sync_batchnorm:
        if device.type != "cuda":
            raise RuntimeError("train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce for all but the last micro-batch of a step."""
    if sync or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """Mean of a tensor across processes (for logging)."""
    if world.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world.size
    return value


def gather(obj, world: World) -> list:
    """Every process's `obj`, in rank order (a list of one when alone)."""
    if not world.enabled:
        return [obj]
    out: list = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def checksum(module: nn.Module) -> float:
    """A cheap fingerprint of a module's parameters, to check that ranks agree."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() + p.double().sum() for p in module.parameters()))


def shutdown(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()

