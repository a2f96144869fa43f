"""Multi-process training with PyTorch's own engine: DistributedDataParallel under torchrun.

One machine, N processes:   torchrun --standalone --nproc-per-node N -m pipeline.training.worker
Several machines (on each): torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d \\
                              --rdzv-endpoint HOST:PORT --rdzv-id ID -m pipeline.training.worker
The train stage and `ganpipe train` build these commands themselves (worker.launch).

`train.batch_size` is the total batch of one optimiser step across all processes and
micro-batches: every process draws the same global batch indices and noise and takes its
own slices (shards), each with its own random stream, so a run equals one process
accumulating the same shards. The first process of each machine (local rank 0) alone logs,
samples and writes checkpoints and outputs, on that machine's disk: torchrun's c10d
rendezvous may give rank 0 to any machine, and the machine that runs DVC needs its outputs.
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

    @property
    def first_on_machine(self) -> bool:
        """The process that logs, checkpoints and writes outputs for its machine."""
        return self.local_rank == 0


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


def agree_on_checkpoint(state: dict | None, world: World) -> dict | None:
    """The checkpoint every process resumes from, given the one each found (`state`, or None).

    Rank 0 decides: the newest step any process found (machines with their own disks may hold
    different ones after a crash), sent from the lowest rank that holds it to all the others."""
    if not world.enabled:
        return state
    steps = gather(-1 if state is None else int(state["step"]), world)
    decision = [max(steps), steps.index(max(steps))] if world.is_main else [None, None]
    dist.broadcast_object_list(decision, src=0)
    step, holder = decision
    if step < 0:
        return None
    box = [state if world.rank == holder else None]
    dist.broadcast_object_list(box, src=holder)
    return box[0]


def share_buffers(modules: list[nn.Module], world: World) -> None:
    """Rank 0's buffers (BatchNorm statistics, StyleGAN2's average w) in every process.

    Each process updates them from its own shards, and DDP sends rank 0's at the next forward
    anyway (EMA copies take them from the networks at every update), so this changes no
    training; done before anything is saved, it makes every machine save the same bytes."""
    if world.enabled:
        for module in modules:
            for buffer in unwrap(module).buffers():
                dist.broadcast(buffer, src=0)


def checksum(module: nn.Module) -> float:
    """A cheap fingerprint of a module's parameters, to check that ranks agree."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() + p.double().sum() for p in module.parameters()))


def shutdown(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()

