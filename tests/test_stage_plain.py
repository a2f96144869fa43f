"""A stage outside `ganpipe` with no Prefect API configured (a plain `dvc repro`) runs as plain Python:
no temporary Prefect server per stage, not even Prefect's import; with an API configured, it records
its flow run as before (tests/test_prefect_runs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, write_params

from flows.stage import prefect_api_configured

RUN_STAGE = """
import runpy, sys
sys.argv = ["flows.prepare", "--params", "params.yaml"]
try:
    runpy.run_module("flows.prepare", run_name="__main__")
except SystemExit as exit:
    print("exit", exit.code, "prefect imported:", "prefect" in sys.modules)
"""


def plain_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO), "GANPIPE_THREADS": "1"}


def test_a_stage_without_a_prefect_api_runs_as_plain_python(tmp_path):
    write_params(tmp_path / "params.yaml", TINY)
    res = subprocess.run([sys.executable, "-c", RUN_STAGE], cwd=tmp_path, env=plain_env(tmp_path / "prefect-home"),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "exit 0 prefect imported: False" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    assert "no Prefect API configured, so no flow run is recorded" in res.stderr
    assert "prepared {'train': 1412, 'val': 385} images" in res.stdout  # the task's print reaches the console
    assert (tmp_path / "data/prepared").is_dir() and (tmp_path / "reports/data_report.json").is_file()
    assert not (tmp_path / "prefect-home").exists()  # no temporary server, no database


def test_a_user_error_in_a_plain_stage_is_one_line_and_exit_2(tmp_path):
    write_params(tmp_path / "params.yaml", {**TINY, "data": {"source": "folder", "path": "missing"}})
    res = subprocess.run([sys.executable, "-m", "flows.prepare"], cwd=tmp_path, env=plain_env(tmp_path / "h"),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert errors == [errors[0]] and errors[0].startswith("ganpipe prepare: error: ") and "missing" in errors[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("profiles", "environ", "configured"),
    [
        (None, {}, False),
        (None, {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, True),
        ({"active": "team", "profiles": {"team": {"PREFECT_API_URL": "http://x/api"}}}, {}, True),
        ({"active": "local", "profiles": {"local": {}, "team": {"PREFECT_API_URL": "http://x/api"}}}, {}, False),
        ({"active": "local", "profiles": {"team": {"PREFECT_API_URL": "http://x/api"}}}, {"PREFECT_PROFILE": "team"},
         True),
        ("not = [toml", {}, False),
    ],
    ids=["nothing", "environment", "active-profile", "other-profile", "PREFECT_PROFILE", "broken-file"],
)
def test_the_prefect_api_is_found_where_prefect_and_ganpipe_set_it(tmp_path, profiles, environ, configured):
    if profiles is not None:
        text = profiles if isinstance(profiles, str) else toml(profiles)
        (tmp_path / "profiles.toml").write_text(text)
    assert prefect_api_configured({**environ, "PREFECT_HOME": str(tmp_path)}) is configured


def toml(profiles: dict) -> str:
    lines = [f'active = "{profiles["active"]}"']
    for name, settings in profiles["profiles"].items():
        lines.append(f"[profiles.{name}]")
        lines += [f'{k} = "{v}"' for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def test_prefect_s_own_profile_file_is_read_the_same_way(tmp_path):
    """The file `prefect config set` writes, read back by Prefect itself and by prefect_api_configured."""
    env = {**plain_env(tmp_path), "PREFECT_HOME": str(tmp_path)}
    prefect = str(Path(sys.executable).with_name("prefect"))
    subprocess.run([prefect, "config", "set", "PREFECT_API_URL=http://127.0.0.1:9/api"], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    assert prefect_api_configured({"PREFECT_HOME": str(tmp_path)})
