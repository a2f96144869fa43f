"""Where a training step's time goes: the engine and the textbook loop under torch.profiler.

    python bench/step_profile.py --size 64 --batch 64          # on CUDA when present, else the CPU

Prints, per step of each loop: wall time, host (CPU) time spent in PyTorch ops, device kernel
time and kernel launches, and the operators costing the most host time. A step whose host time
exceeds its kernel time leaves the GPU idle: fewer launches and syncs are the fix, not faster
kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from training import Engine, Textbook, params_for, prepared_at  # noqa: E402

from pipeline.runtime import resolve_device  # noqa: E402


def profile_loop(loop, device: torch.device, steps: int, top: int) -> dict:
    for _ in range(5):
        loop.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            loop.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / steps
    events = prof.key_averages()
    host_us = sum(e.self_cpu_time_total for e in events) / steps
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events) / steps
    kernels = sum(e.count for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA) / steps
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "wall_ms_per_step": round(wall * 1e3, 3),
        "host_op_ms_per_step": round(host_us / 1e3, 3),
        "device_kernel_ms_per_step": round(device_us / 1e3, 3),
        "kernels_per_step": round(kernels, 1),
        "top_host_ops": [
            {
                "op": e.key,
                "calls_per_step": round(e.count / steps, 1),
                "host_us_per_step": round(e.self_cpu_time_total / steps, 1),
            }
            for e in ops
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    device = resolve_device(a.device)
    channels = 3 if a.size > 32 else 1
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepared_at(Path(tmp), a.size, channels)
        params = params_for(a.size, channels, a.batch, device)
        out = {"size": a.size, "batch": a.batch, "device": str(device),
               "textbook": profile_loop(Textbook(params, prepared, device), device, a.steps, a.top),
               "engine": profile_loop(Engine(params, prepared, device), device, a.steps, a.top)}  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
