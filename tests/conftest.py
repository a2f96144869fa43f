"""Shared fixtures. One Prefect test harness (a real temporary server) for the whole session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.cli import merge_overlay
from pipeline.config import Params, parse_params

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers: one thread each, in this process and every child
    os.environ.setdefault("GANPIPE_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small enough to train in seconds on 2 CPU cores, big enough to exercise every code path.
TINY = {
    "data": {"image_size": 16},
    "model": {"latent_dim": 16, "g_channels": 16, "d_channels": 16},
    "train": {"steps": 12, "batch_size": 16, "sample_every": 6, "log_every": 3, "checkpoint_every": 6},
    "evaluate": {"kid_subset_size": 50, "kid_subsets": 10, "evaluator": {"steps": 40, "batch_size": 64}},
}


merge = merge_overlay  # the same overlay rule `ganpipe exp` uses


def tiny_params(**over: dict) -> Params:
    return parse_params(merge(TINY, over))


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A real Prefect API on 127.0.0.1 (prefect_test_harness), exported for child processes."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


@pytest.fixture(scope="session")
def prepared_digits(tmp_path_factory) -> Path:
    """The digits dataset prepared at 16x16, shared read-only by tests that train."""
    from pipeline.data.prepare import prepare

    root = tmp_path_factory.mktemp("digits16")
    prepare(tiny_params().data, root / "prepared", root / "data_report.json")
    return root / "prepared"


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    from flows.stage import tool_env  # imported here: tests of the library alone run without Prefect

    res = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def make_repo(root: Path, overlay: dict) -> Path:
    """A copy of the project's working tree as a fresh git + DVC repository, params overlaid."""
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # the working tree, as committed next
    files = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and f != "dvc.lock":
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, root / f)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    write_params(root / "params.yaml", merge(params, overlay))
    sh(["git", "init", "-q"], root)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "init", "--allow-empty"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "code"], root)
    return root
