"""DVCLive logs that survive a resume: continued where the checkpoint left off; what is logged.

The dvclive/ outputs are `persist: true` in dvc.yaml, like the checkpoints, so a rerun
after a crash appends to the curves instead of losing them. Rows and sample grids logged
after the checkpoint being resumed (the crash came later) are dropped first, so no step
appears twice.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.artifacts import write_bytes

if TYPE_CHECKING:
    import torch


def has_logs(live_dir: Path | str) -> bool:
    return (Path(live_dir) / "metrics.json").is_file()


def truncate_after(live_dir: Path | str, step: int) -> None:
    """Remove every logged scalar row and sample image with a step greater than `step`."""
    live_dir = Path(live_dir)
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        with tsv.open(newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        if not rows:
            continue
        col = rows[0].index("step") if "step" in rows[0] else None
        kept = [rows[0]] + [r for r in rows[1:] if col is None or int(r[col]) <= step]
        text = "".join("\t".join(r) + "\n" for r in kept)
        write_bytes(tsv, text.encode())
    for img in (live_dir / "plots" / "images").rglob("*.png"):
        if img.stem.isdigit() and int(img.stem) > step:
            img.unlink()


def open_live(live_dir: Path | str, resume_step: int):
    """A DVCLive logger: fresh (old logs cleared) when `resume_step` is 0, else continued."""
    from dvclive import Live  # imported here: the library is usable without a logger

    if resume_step:
        truncate_after(live_dir, resume_step)
    return Live(dir=str(live_dir), resume=resume_step > 0, dvcyaml=False, save_dvc_exp=False, report=None)


def grad_norm(module: torch.nn.Module) -> float:
    """The L2 norm of all of a module's gradients (a logged diagnostic)."""
    import torch

    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0
