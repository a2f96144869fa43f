"""The project copied into a fresh git + DVC repository with tiny parameters: where the pipeline
tests and the orchestration benchmark (bench/orchestration.py) run the real pipeline. Plain
Python, no pytest, so the benchmark can use it outside a test run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from flows.cli import merge_overlay

REPO = Path(__file__).resolve().parents[1]

# Small enough to train in seconds on 2 CPU cores, big enough to exercise every code path.
TINY = {
    "data": {"image_size": 16},
    "model": {"latent_dim": 16, "g_channels": 16, "d_channels": 16},
    "train": {"steps": 12, "batch_size": 16, "sample_every": 6, "log_every": 3, "checkpoint_every": 6},
    "evaluate": {"kid_subset_size": 50, "kid_subsets": 10, "evaluator": {"steps": 40, "batch_size": 64}},
}


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _git(args: list[str], cwd: Path) -> None:
    res = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    if res.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-4000:]}")


def make_repo(root: Path, overlay: dict) -> Path:
    """A copy of the project's working tree as a fresh git + DVC repository, params overlaid."""
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # the working tree, as committed next
    files = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and f != "dvc.lock":
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, root / f)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    write_params(root / "params.yaml", merge_overlay(params, overlay))
    _git(["init", "-q"], root)
    _git(["commit", "-qam", "init", "--allow-empty"], root)
    _git(["add", "-A"], root)
    _git(["commit", "-qm", "code"], root)
    return root
