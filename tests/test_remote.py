"""A second machine gets everything from a real S3 DVC remote (SeaweedFS on 127.0.0.1): the
committed run, a parameter set that was run but never committed, and a promoted registry
version, each without running a single stage. Real git, real DVC, real Prefect.

Machine A pushes with `ganpipe push`: `dvc push --run-cache` leaves out the files of runs no
longer in the workspace and every git-tracked output, which a restored run needs."""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, make_repo, merge, sh, write_params
from s3_server import S3Server, s3_server

from flows.stage import tool_env

pytestmark = pytest.mark.integration

DVC = [sys.executable, "-m", "dvc"]  # DVC itself runs from this interpreter, whatever PATH says
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
REMOTE, PREFIX = "storage", "team"
SECOND = {"data": {"val_fraction": 0.25}}  # every stage depends on it: prepare reads it, the rest its output
NO_PYTHON = "#!/bin/sh\necho \"$0 $*\" >> '{marker}'\nexit 1\n"


def credentials(repo: Path, s3: S3Server) -> None:
    """What each teammate does once per clone: the keys go to .dvc/config.local, never into git."""
    sh([*DVC, "remote", "modify", "--local", REMOTE, "access_key_id", s3.access_key], repo)
    sh([*DVC, "remote", "modify", "--local", REMOTE, "secret_access_key", s3.secret_key], repo)


def set_params(repo: Path, overlay: dict) -> None:
    write_params(repo / "params.yaml", merge(yaml.safe_load((repo / "params.yaml").read_text()), overlay))


def lock_outs(repo: Path) -> dict[str, list[dict]]:
    """Each stage's outputs as dvc.lock records them (path, md5, ...)."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: stage.get("outs", []) for name, stage in stages.items()}


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every file of every output in dvc.lock, by path: what a stage left behind."""
    files = {}
    for outs in lock_outs(repo).values():
        for out in outs:
            root = repo / out["path"]
            for f in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                files[f.relative_to(repo).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return files


def dvc_without_python(repo: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run DVC with a PATH on which `python` and `python3` (what dvc.yaml's stage commands call)
    record their call and fail; returns DVC's result and the record, which exists only if a stage
    command ran."""
    shims, marker = repo.parent / f"{repo.name}-shims", repo.parent / f"{repo.name}-stage-ran"
    shims.mkdir(exist_ok=True)
    for name in ("python", "python3"):
        (shims / name).write_text(NO_PYTHON.format(marker=marker))
        (shims / name).chmod(0o755)
    env = tool_env()
    env["PATH"] = os.pathsep.join([str(shims), env["PATH"]])
    res = subprocess.run([*DVC, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    return res, marker


def clone(origin: Path, dest: Path, s3: S3Server) -> Path:
    sh(["git", "clone", "-q", str(origin), str(dest)], dest.parent)
    credentials(dest, s3)
    return dest


def push(repo: Path) -> None:
    """`dvc push --run-cache` and the run-cache's files that it leaves out: `ganpipe push`."""
    assert "pushed the outputs and the run-cache" in sh([sys.executable, "-m", "flows.cli", "push"], repo).stdout


@pytest.fixture(scope="module")
def team(tmp_path_factory, prefect_api, s3) -> dict:
    """Machine A: the tiny pipeline run, committed and pushed with its run-cache; then a second
    parameter set run and pushed, never committed, and the workspace put back. Returns A's repo,
    what each run left (file hashes and dvc.lock) and A's run-cache entries."""
    a = make_repo(tmp_path_factory.mktemp("machine-a"), TINY)
    sh([*DVC, "remote", "add", "-d", REMOTE, s3.url(PREFIX)], a)
    sh([*DVC, "remote", "modify", REMOTE, "endpointurl", s3.endpoint], a)  # team-wide: committed
    credentials(a, s3)
    sh([*DVC, "repro"], a)
    sh([*GIT, "add", "-A"], a)
    sh([*GIT, "commit", "-qm", "tiny run, S3 remote"], a)
    push(a)
    first, first_lock = snapshot(a), yaml.safe_load((a / "dvc.lock").read_text())
    set_params(a, SECOND)
    sh([*DVC, "repro"], a)
    push(a)
    second, second_lock = snapshot(a), yaml.safe_load((a / "dvc.lock").read_text())
    sh(["git", "checkout", "--", "."], a)
    sh([*DVC, "checkout"], a)
    runs = sorted(p.relative_to(a / ".dvc/cache").as_posix() for p in (a / ".dvc/cache/runs").glob("*/*/*"))
    return {"repo": a, "first": first, "first_lock": first_lock, "second": second, "second_lock": second_lock,
            "runs": runs}  # fmt: skip


def test_the_s3_server_accepts_only_its_keys_and_is_gone_after_the_block(tmp_path):
    from botocore.exceptions import ClientError

    with s3_server(tmp_path / "s3", bucket="check") as server:
        server.client().put_object(Bucket="check", Key="a/b", Body=b"data")
        assert server.keys() == ["a/b"]
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            server.client("someone", "else").get_object(Bucket="check", Key="a/b")
        port = int(server.endpoint.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_push_sends_every_output_of_both_runs_and_each_stage_run_to_the_bucket(team, s3):
    keys = set(s3.keys())
    for lock in (team["first_lock"], team["second_lock"]):
        for name, stage in lock["stages"].items():
            for out in stage["outs"]:  # git-tracked ones (cache: false) too: a restored run needs them
                md5 = out["md5"]
                assert f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}" in keys, (name, out["path"])
    assert len(team["runs"]) == 2 * len(team["first_lock"]["stages"])  # one entry per stage and parameter set
    assert {f"{PREFIX}/{run}" for run in team["runs"]} <= keys


def test_a_fresh_clone_pulls_the_committed_run_and_reproduces_it_without_running_a_stage(team, s3, tmp_path):
    b = clone(team["repo"], tmp_path / "machine-b", s3)
    assert not (b / ".dvc" / "cache").exists()  # nothing but git came with the clone
    sh([*DVC, "pull", "--run-cache"], b)
    res, ran = dvc_without_python(b, "repro")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not ran.exists(), ran.read_text()
    assert "Running stage" not in res.stdout
    for stage in team["first_lock"]["stages"]:
        assert f"Stage '{stage}' didn't change, skipping" in res.stdout
    assert snapshot(b) == team["first"]


def test_a_fresh_clone_restores_an_uncommitted_parameter_set_from_the_remote_run_cache(team, s3, tmp_path):
    c = clone(team["repo"], tmp_path / "machine-c", s3)
    set_params(c, SECOND)  # what A ran, pushed and never committed
    res, ran = dvc_without_python(c, "repro", "--pull")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not ran.exists(), ran.read_text()
    assert "Running stage" not in res.stdout
    for stage in team["second_lock"]["stages"]:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in res.stdout
    assert yaml.safe_load((c / "dvc.lock").read_text()) == team["second_lock"]
    assert snapshot(c) == team["second"]


def test_retraining_shares_the_promoted_version_and_its_record_fetches_it_on_another_machine(team, s3, tmp_path):
    from flows.retrain import retrain_flow
    from pipeline.registry import Registry

    a = team["repo"]
    bare = tmp_path / "origin.git"
    sh(["git", "init", "-q", "--bare", str(bare)], tmp_path)
    sh(["git", "remote", "add", "origin", str(bare)], a)
    sh(["git", "push", "-q", "origin", "HEAD"], a)
    # a different export tolerance: a different ONNX file (its metadata holds the params' hash)
    summary = retrain_flow(repo=str(a), force=True, overrides=["export.parity_tolerance=0.0002"])
    assert summary["action"] == "promoted" and summary["pushed"] is True
    reg = Registry(a / "registry")
    fetch = reg.info(summary["champion"])["fetch"]
    assert fetch["git_remote"] == str(bare) and fetch["dvc_remote"] == s3.url(PREFIX)
    assert set(fetch["commands"]) == {"generator", "generator-onnx"} and set(summary["tags"]) == set(fetch["tags"])
    # the tags name the experiment's commit on the git remote, which also holds the experiment's ref
    remote_refs = sh(["git", "ls-remote", str(bare)], tmp_path).stdout.splitlines()
    for tag in fetch["tags"]:
        assert f"{fetch['git_rev']}\trefs/tags/{tag}^{{}}" in remote_refs
    assert any(line.startswith(fetch["git_rev"]) and "\trefs/exps/" in line for line in remote_refs)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**tool_env(), "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    res = subprocess.run(shlex.split(fetch["commands"]["generator-onnx"]), cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    fetched = (elsewhere / "exports" / "generator.onnx").read_bytes()
    assert fetched == reg.model_path(summary["champion"]).read_bytes()
    assert hashlib.sha256(fetched).hexdigest() != team["first"]["exports/generator.onnx"]  # the experiment's file


def test_push_without_a_dvc_remote_is_one_line_naming_the_problem(tmp_path):
    repo = make_repo(tmp_path / "no-remote", TINY)
    res = sh([sys.executable, "-m", "flows.cli", "push"], repo, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("ganpipe push: error: ") and "remote" in line.lower()
