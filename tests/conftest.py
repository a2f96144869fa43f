"""Shared fixtures. One Prefect test harness (a real temporary server) for the whole session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from project_copy import REPO, TINY, make_repo, write_params  # noqa: F401  (re-exported to the tests)
from s3_server import S3Server, s3_server

from flows.cli import merge_overlay
from pipeline.config import Params, parse_params

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers: one thread each, in this process and every child
    os.environ.setdefault("GANPIPE_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

merge = merge_overlay  # the same overlay rule `ganpipe exp` uses


def tiny_params(**over: dict) -> Params:
    return parse_params(merge(TINY, over))


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


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 with one empty bucket and the keys it accepts
    (tests/s3_server.py); stopped, and its process gone, after the session."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server
