"""Shared fixtures. One Prefect test harness (a real temporary server) for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.cli import merge_overlay
from pipeline.config import Params, parse_params

REPO = Path(__file__).resolve().parents[1]

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
