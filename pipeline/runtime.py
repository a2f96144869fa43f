"""Where and how torch runs: device choice, seeding, CPU threads."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from pipeline.errors import UserError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """'auto' -> CUDA when a GPU is usable, else CPU; 'cuda' without a GPU is an error naming `key`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no usable CUDA GPU was found; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return dev


def device_of(module: torch.nn.Module) -> torch.device:
    """Where a module's weights are (the CPU for one without any): where its inputs must go."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, None for full precision. 'auto' is full precision everywhere: on CUDA its
    convolutions and matrix products run on the tensor cores in TF32 (set by resolve_device).
    Measured on an H200 with the shipped networks at 32 and 64 px (docs/benchmarks.md), TF32
    trains 9-22% faster than bf16 autocast, whose per-forward weight casts cost more kernel
    launches than its arithmetic saves at these sizes. 'bf16' and 'fp16' (with a GradScaler) are
    there for networks large enough to be bound by arithmetic or memory."""
    if name in ("auto", "fp32"):
        return None
    if device.type != "cuda":
        raise RuntimeError(f"train.precision {name} needs CUDA; use 'auto' or 'fp32' on CPU")
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("train.precision bf16 is not supported by this GPU; use 'fp16' or 'auto'")
    return torch.bfloat16 if name == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA with `dtype`; a no-op in full precision."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded RNG that draws where the training tensors live: on the GPU when training there
    (no host-to-device copy, no sync per draw), on the CPU otherwise. Its state goes into
    checkpoints, so a resumed run continues the same stream on the same kind of device."""
    return torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)


def adam(params, lr: float, betas, device: torch.device) -> torch.optim.Adam:
    """Adam, fused into one kernel per step on CUDA (PyTorch's for-each implementation on the CPU,
    which keeps CPU runs byte-identical to earlier releases)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=device.type == "cuda" or None)


def seed_everything(seed: int) -> None:
    """Seed every global RNG a stage might touch (Python, NumPy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int = 0) -> None:
    """Pin torch's intra-op threads: `threads`, else $GANPIPE_THREADS, else torch's default.

    A runtime knob, not a param: parallel test workers or stages sharing a small machine
    set GANPIPE_THREADS=1 (two 2-thread processes on 2 cores run about 12x slower).
    """
    threads = threads or int(os.environ.get("GANPIPE_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
