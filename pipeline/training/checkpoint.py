"""Training checkpoints: written atomically, the last two kept, a corrupt newest one skipped.

A checkpoint carries a fingerprint of everything that shapes training except its length,
so a rerun after a crash, or with more `train.steps`, continues exactly, while a run with
other settings never resumes from weights trained under different ones. A run with fewer
steps than an earlier one resumes from that run's checkpoint at or below its own length
and leaves the later ones for when the longer run is asked for again.

Checkpoints are no DVC output (an output DVC must not delete would switch its run-cache
off): each fingerprint has its own folder under the checkpoint root, `<root>/<fingerprint>/`,
so two parameter sets never share one, and the folders of the KEEP_RUNS most recently
trained parameter sets are kept.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import save_torch

log = logging.getLogger(__name__)
KEEP = 2  # checkpoints per run folder
KEEP_RUNS = 4  # run folders (parameter sets) kept under the checkpoint root
_NAME = re.compile(r"^ckpt_(\d{7})\.pt$")


def checkpoint_files(directory: Path | str) -> list[Path]:
    """Checkpoints in `directory`, newest (highest step) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _step(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def run_folder(root: Path | str, fingerprint: str) -> Path:
    """The folder that holds the checkpoints of the run with `fingerprint`."""
    return Path(root) / fingerprint


def prune_runs(root: Path | str, current: str, keep: int = KEEP_RUNS) -> list[Path]:
    """Remove the run folders under `root` beyond the `keep` most recently written, never the
    `current` one; the removed folders."""
    root = Path(root)
    if not root.is_dir():
        return []
    others = [d for d in root.iterdir() if d.is_dir() and d.name != current and not d.name.startswith(".")]
    others.sort(key=lambda d: d.stat().st_mtime_ns, reverse=True)
    removed = others[max(keep - 1, 0):]
    for d in removed:
        shutil.rmtree(d, ignore_errors=True)
        log.info("removed the checkpoints of an older parameter set: %s", d)
    return removed


def save_checkpoint(directory: Path | str, step: int, state: dict[str, Any]) -> Path:
    """Write `ckpt_<step>.pt` atomically and keep the newest KEEP at or below `step`; those of
    a longer run of the same settings (above `step`) stay for when it is resumed."""
    target = Path(directory) / f"ckpt_{step:07d}.pt"
    save_torch(target, state)
    for old in [p for p in checkpoint_files(directory) if _step(p) <= step][KEEP:]:
        old.unlink(missing_ok=True)
    return target


def load_latest(
    directory: Path | str, fingerprint: str, max_step: int, remove_stale: bool = True
) -> dict[str, Any] | None:
    """The newest readable checkpoint made under `fingerprint` at a step <= `max_step`.

    Checkpoints beyond `max_step` are skipped and kept; unreadable ones are skipped with a
    warning; those made with other settings or code are removed (they can never be resumed
    and would shadow this run's own).
    """
    for path in checkpoint_files(directory):
        if _step(path) > max_step:
            log.info("checkpoint %s is beyond train.steps=%d; kept for a longer run", path, max_step)
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or corrupt file: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, err)
            continue
        if state.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s was made with other settings or code; it is not resumed", path)
            if remove_stale:
                path.unlink(missing_ok=True)
            continue
        return state
    return None
