"""What every benchmark shares: the context it runs in, timing with a device sync, and the
median/min/max summary every figure is reported as."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Context:
    quick: bool  # a fast pass that proves the suite works (fewer repeats and sizes), not a record
    device: torch.device  # where training and PyTorch inference run
    prepared: Path  # the default data (32x32 digits) prepared
    tmp: Path  # a scratch folder, removed after the run

    def repeats(self, full: int = 5) -> int:
        return 2 if self.quick else full


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float], digits: int = 1) -> dict:
    """A figure as reported everywhere in the suite: the median of the repeats, with min and max."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "repeats": len(values)}  # fmt: skip


def rate(fn: Callable[[], object], items_per_call: int, calls: int, device: torch.device) -> float:
    """Items per second over `calls` calls of fn, the device drained before the clock stops."""
    sync(device)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return items_per_call * calls / (time.perf_counter() - t)


def rates(fn: Callable[[], object], items_per_call: int, seconds: float, repeats: int, device: torch.device) -> dict:
    """summary() of `repeats` rate() measurements, each of as many calls as fill about `seconds`,
    judged by the warm-up call (which also absorbs first-call costs); the call count included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    calls = max(1, min(2000, round(seconds / (time.perf_counter() - start))))
    return summary([rate(fn, items_per_call, calls, device) for _ in range(repeats)]) | {"calls": calls}


def fmt(figure: dict | None, unit: str = "") -> str:
    """'1,234 (1,200–1,250)' for a summary; '–' when absent."""
    if not figure:
        return "–"
    digits = 0 if figure["median"] >= 100 else (1 if figure["median"] >= 10 else 2)
    f = f"{{:,.{digits}f}}"
    return f"{f.format(figure['median'])}{unit} ({f.format(figure['min'])}–{f.format(figure['max'])})"
