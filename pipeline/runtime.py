"""Where and how torch runs: device choice, seeding, CPU threads."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when a GPU is usable, else CPU; 'cuda' without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no usable CUDA GPU was found; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return dev


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no GradScaler needed for bf16); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
