"""Scheduled retraining against a real Prefect server: the deployment is served by
`ganpipe schedule` in its own process, runs are triggered through the API, and the
registry shows the promotion, then the refusal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, make_repo, sh

from flows.stage import tool_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_api):
    """A tiny pipeline repository with a local-directory DVC remote, and its retraining
    deployment served (as a user would: `ganpipe schedule --cron ...`)."""
    repo = make_repo(tmp_path_factory.mktemp("retrain"), TINY)
    remote = tmp_path_factory.mktemp("dvc-remote")
    sh([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], repo)
    env = tool_env()
    log = open(repo / "schedule.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "schedule", "--cron", "0 3 * * *"],
                            cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_deployment("ganpipe-retrain/nightly", proc, repo)
        yield repo, remote
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def wait_for_deployment(name: str, proc: subprocess.Popen, repo: Path, timeout: float = 120) -> None:
    from prefect.client.orchestration import get_client

    async def exists() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name(name)
                return True
            except Exception:
                return False

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ganpipe schedule exited: {(repo / 'schedule.log').read_text()[-3000:]}")
        if asyncio.run(exists()):
            return
        time.sleep(1)
    raise AssertionError(f"deployment {name} never appeared: {(repo / 'schedule.log').read_text()[-3000:]}")


def trigger(parameters: dict) -> tuple[str, dict]:
    """Run the deployment through the API and wait; return its final state and decision artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment

    run = run_deployment("ganpipe-retrain/nightly", parameters=parameters, timeout=600, as_subflow=False)

    async def artifacts():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            return {a.key: a.data for a in found}

    return run.state.type.value, asyncio.run(artifacts())


def test_deployment_is_registered_with_its_schedule_and_a_limit_of_one(served):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            dep = await client.read_deployment_by_name("ganpipe-retrain/nightly")
            limit = await client.read_global_concurrency_limit_by_name("ganpipe-retrain")
            return dep, limit

    # the flow creates its global limit on its first run: run once so both exist
    state, _ = trigger({"force": True})
    dep, limit = asyncio.run(read())
    assert state == "COMPLETED"
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
    assert dep.global_concurrency_limit.limit == 1 and limit.limit == 1


def test_first_run_promotes_then_an_equal_model_is_refused(served):
    from pipeline.registry import Registry

    repo, remote = served
    reg = Registry(repo / "registry")
    assert reg.champion() == "v0001"  # promoted by the first run (no champion before it)
    assert any(remote.rglob("*")), "dvc push to the local remote wrote nothing"
    # nothing changed since: a scheduled run does nothing
    state, art = trigger({})
    assert state == "COMPLETED" and "inputs unchanged" in art["ganpipe-retrain"]
    assert reg.versions() == ["v0001"]
    # forced again: the same (deterministic) model cannot beat the champion by the margin
    state, art = trigger({"force": True, "margin": 0.05})
    assert state == "COMPLETED"
    assert "Kept" in art["ganpipe-retrain"] and "does not beat the champion" in art["ganpipe-retrain"]
    assert reg.versions() == ["v0001"] and reg.champion() == "v0001"
    rows = art["ganpipe-retrain-metrics"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    fid = next(r for r in rows if r["metric"] == "eval.fid")
    assert fid["candidate"] == fid["champion"]
    # a longer run is a different model: with no margin it is promoted if it is better, kept if not
    state, art = trigger({"force": True, "margin": 0.0, "overrides": ["train.steps=18"]})
    assert state == "COMPLETED"
    decision = art["ganpipe-retrain"]
    new_fid = json.loads((repo / "metrics/eval.json").read_text())["fid"]
    if new_fid < reg.info("v0001")["metrics"]["eval"]["fid"]:
        assert "Promoted" in decision and reg.champion() == "v0002"
    else:
        assert "Kept" in decision and reg.champion() == "v0001"


def test_a_worker_elsewhere_runs_the_deployment_from_git_and_the_dvc_remote(tmp_path, prefect_api):
    """`prefect deploy` of the shipped prefect.yaml, then `prefect worker start --run-once` in another
    folder with a clean environment: the run clones the repository (a bare one, file://), pulls the
    data from the DVC remote, restores every stage instead of running it, promotes into the registry
    the deployment names, and its logs and decision reach the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    from pipeline.registry import Registry

    repo = make_repo(tmp_path / "repo", TINY)
    sh([sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], repo)
    sh([sys.executable, "-m", "dvc", "repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "a run"], repo)
    sh([sys.executable, "-m", "flows.cli", "push"], repo)
    origin = tmp_path / "origin.git"
    sh(["git", "clone", "-q", "--bare", str(repo), str(origin)], tmp_path)
    pool, registry = f"pool-{tmp_path.name[-12:]}", tmp_path / "registry"
    prefect = [sys.executable, "-m", "prefect"]
    for name, value in (("ganpipe_repository", origin.as_uri()), ("ganpipe_registry", str(registry))):
        sh([*prefect, "variable", "set", name, value, "--overwrite"], repo)
    sh([*prefect, "work-pool", "create", pool, "--type", "process"], repo)
    res = sh([*prefect, "--no-prompt", "deploy", "--name", "nightly-pool", "--pool", pool], repo)

    async def deployment():
        async with get_client() as client:
            return await client.read_deployment_by_name("ganpipe-retrain/nightly-pool")

    dep = asyncio.run(deployment())
    assert dep.work_pool_name == pool and dep.entrypoint == "flows.retrain:retrain_flow"
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"] and dep.global_concurrency_limit.limit == 1
    assert dep.parameters["registry"] == str(registry), res.stdout[-2000:]
    run = sh([*prefect, "deployment", "run", "ganpipe-retrain/nightly-pool"], repo).stdout
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", run).group(1)
    # the worker: another folder, nothing of the repository's, an environment with only what it needs
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
           "HOME": str(elsewhere), "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(elsewhere / ".prefect"),
           "GANPIPE_THREADS": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    worker = subprocess.run([*prefect, "worker", "start", "--pool", pool, "--run-once"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    async def outcome():
        async with get_client() as client:
            flow_run = await client.read_flow_run(run_id)
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
            )
            return flow_run, "\n".join(log.message for log in logs), {a.key: a.data for a in found}

    flow_run, logs, artifacts = asyncio.run(outcome())
    assert flow_run.state.type.value == "COMPLETED", logs[-3000:] + worker.stdout[-3000:] + worker.stderr[-3000:]
    assert Registry(registry).champion() == "v0001"
    assert "Promoted" in artifacts["ganpipe-retrain"]
    # dvc exp run's own output, in the run's logs: the pulled data made every stage up to date
    assert "didn't change, skipping" in logs and "Running stage" not in logs, logs[-3000:]
    assert not (elsewhere / "registry").exists() and not (repo / "registry").exists()


def test_sigterm_stops_serving_as_ctrl_c_does_and_the_next_schedule_resumes(tmp_path, prefect_api):
    """SIGTERM (kill, systemd, docker stop) cancels the run in progress, pauses the schedule and exits
    at once; the next `ganpipe schedule` serves it again. The run waits on the retraining limit,
    held here, so a shutdown that waited for it would never end."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.deployments import run_deployment

    from flows.retrain import CONCURRENCY_LIMIT, _ensure_limit

    def schedule() -> subprocess.Popen:
        env = {**tool_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        with open(tmp_path / "schedule.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "schedule", "--name", "sigterm"], cwd=tmp_path,
                                    env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for_deployment("ganpipe-retrain/sigterm", proc, tmp_path)
        return proc

    def until(check, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not check() and time.time() < deadline:
            time.sleep(0.5)

    async def read(run_id=None):
        async with get_client() as client:
            dep = await client.read_deployment_by_name("ganpipe-retrain/sigterm")
            return dep.paused, run_id and (await client.read_flow_run(run_id)).state.type.value

    _ensure_limit(CONCURRENCY_LIMIT)
    proc = schedule()
    try:
        with concurrency(CONCURRENCY_LIMIT, occupy=1):
            run = run_deployment("ganpipe-retrain/sigterm", parameters={"margin": 0.0}, timeout=0, as_subflow=False)
            until(lambda: asyncio.run(read(run.id))[1] == "RUNNING")
            assert asyncio.run(read(run.id)) == (False, "RUNNING")
            proc.terminate()
            assert proc.wait(timeout=45) == 0
        assert asyncio.run(read(run.id)) == (True, "CANCELLED")
        proc = schedule()  # the deployment is there already: wait for the new process to resume it
        until(lambda: asyncio.run(read())[0] is False)
        assert asyncio.run(read()) == (False, None)
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in (tmp_path / "schedule.log").read_text()
