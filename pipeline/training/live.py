"""DVCLive logs that survive a resume, and what is logged.

DVC deletes the train stage's outputs (dvclive/ among them) before it runs the stage, and
its run-cache needs it to: no output may persist. So the logs a resumed run continues come
from the checkpoint, not from files DVC kept: every checkpoint holds the log folder as it
was at that step (`snapshot`), and a resumed run lays it back (`open_live`) before logging
on. Rows and sample grids logged after that checkpoint (the crash came later) are gone with
the rest of the folder, so no step appears twice and the curves equal an uninterrupted run's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.artifacts import write_bytes

if TYPE_CHECKING:
    import torch


def snapshot(live_dir: Path | str) -> dict[str, bytes]:
    """Every file of the log folder (curves, sample grids, the summary), by path relative to it."""
    live_dir = Path(live_dir)
    return {p.relative_to(live_dir).as_posix(): p.read_bytes() for p in sorted(live_dir.rglob("*")) if p.is_file()}


def open_live(live_dir: Path | str, files: dict[str, bytes] | None = None):
    """A DVCLive logger: fresh (old logs cleared) when `files` is None, else continued from the
    log folder `files` holds (a checkpoint's `snapshot`), which replaces whatever is there."""
    from dvclive import Live  # imported here: the library is usable without a logger

    if files is not None:
        shutil.rmtree(live_dir, ignore_errors=True)
        for rel, data in files.items():
            write_bytes(Path(live_dir) / rel, data)
    return Live(dir=str(live_dir), resume=files is not None, dvcyaml=False, save_dvc_exp=False, report=None)


def grad_norm(module: torch.nn.Module) -> float:
    """The L2 norm of all of a module's gradients (a logged diagnostic)."""
    import torch

    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0
