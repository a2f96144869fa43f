"""Scheduled retraining: run the pipeline as a DVC experiment and promote the result only if
it is better than the champion.

    detect changes (dvc status) -> dvc exp run -> read metrics -> compare with the champion
    -> promote (registry/) or keep the champion, saying why -> share the run (if remotes exist)

Sharing: with a git remote, `dvc exp push` sends the experiment's git ref; a promoted version
is also tagged `<artifact>@v0.0.N` on the experiment's commit and the tags pushed, so
`dvc artifacts get <git remote> generator-onnx --rev v0.0.N` fetches it on any machine
(version.json's `fetch` holds the exact commands). With a DVC remote, `ganpipe push` sends the
workspace's outputs (the promoted model's files), the run-cache and the files of every run in
it, which `dvc push --run-cache` leaves out.

Each step is a task; the steps that touch the outside world retry on failure. A global
concurrency limit (and the deployment's own limit, see `serve_retraining`) keeps two runs
from ever overlapping: they share one workspace and DVC's repository lock. The decision and
the metrics table are published as Prefect artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.runner import Runner

from flows.stage import child_env, tool_env
from pipeline import layout
from pipeline.artifacts import read_metrics
from pipeline.config import load_params
from pipeline.registry import FetchSource, Registry, compare
from pipeline.workspace import workspace_lock

CONCURRENCY_LIMIT = "ganpipe-retrain"


def _dvc(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env or tool_env(), capture_output=True,
                         text=True)  # fmt: skip
    if check and res.returncode != 0:
        raise RuntimeError(
            f"dvc {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def changed_stages(repo: str) -> list[str]:
    """Stages whose inputs (code, params or data under data/raw) changed since the last run."""
    status = json.loads(_dvc(Path(repo), "status", "--json").stdout or "{}")
    return sorted(status)


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


def git_remote(repo: Path) -> str | None:
    """The git remote runs are shared through: `origin`, else the first one; None without any."""
    names = _git(repo, "remote").stdout.split()
    return ("origin" if "origin" in names else names[0]) if names else None


def dvc_remote(repo: Path) -> str | None:
    """The URL of the DVC remote `dvc push` uses (the default one), or None without one."""
    res = _dvc(repo, "remote", "default", check=False)  # exit 1: "No default remote set"
    name = res.stdout.strip() if res.returncode == 0 else ""
    if not name:
        return None
    return _dvc(repo, "config", f"remote.{name}.url").stdout.strip()


def experiment_rev(repo: Path, name: str) -> str:
    """The commit of experiment `name` (its ref refs/exps/<baseline>/<name>, written by `dvc exp run`)."""
    refs = _git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/").stdout.split("\n")
    pattern = re.compile(rf"(\S+) refs/exps/[0-9a-f]{{2}}/[0-9a-f]+/{re.escape(name)}")
    found = [m.group(1) for m in map(pattern.fullmatch, refs) if m]
    if len(found) != 1:
        raise RuntimeError(f"experiment {name!r}: expected one ref under refs/exps/, found {len(found)}")
    return found[0]


def fetch_source(repo: Path, experiment: str) -> FetchSource | None:
    """Where a promoted run of `experiment` can be fetched from once shared: None unless the
    repository has both a git remote (for the commit and its tags) and a DVC remote (for the files)."""
    remote, storage = git_remote(repo), dvc_remote(repo)
    if remote is None or storage is None:
        return None
    artifacts = yaml.safe_load((repo / "dvc.yaml").read_text()).get("artifacts") or {}
    return FetchSource(git_remote=_git(repo, "remote", "get-url", remote).stdout.strip(),
                       git_rev=experiment_rev(repo, experiment), dvc_remote=storage,
                       artifacts={name: spec["path"] for name, spec in artifacts.items()},
                       experiment=experiment)  # fmt: skip


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def run_experiment(repo: str, name: str, overrides: list[str]) -> str:
    """`dvc exp run` in the workspace (each stage's flow run a child of this task run, on the same API)."""
    sets = [x for kv in overrides for x in ("-S", kv)]
    with workspace_lock(f"ganpipe retrain (experiment {name})", repo):  # as `ganpipe exp`: one run at a time
        res = _dvc(Path(repo), "exp", "run", "--name", name, *sets, env=child_env(name))
    get_run_logger().info("experiment %s finished:\n%s", name, res.stdout[-2000:])
    return name


@task(cache_policy=NO_CACHE)
def candidate_metrics(repo: str) -> dict:
    return read_metrics(repo)


@task(cache_policy=NO_CACHE)
def promote(repo: str, registry: str, reason: str, fetch: FetchSource | None = None) -> str:
    """A new registry version of the workspace's outputs, `fetch` recorded in its version.json."""
    return Registry(Path(repo) / registry).promote(repo, reason=reason, fetch=fetch)


@task(cache_policy=NO_CACHE)
def tag_version(repo: str, fetch: FetchSource, version: str) -> list[str]:
    """Annotated tags `<artifact>@v0.0.N` on the run's commit, naming registry `version` in DVC's
    model-registry form; a tag that already names another commit is an error, never moved. Where git
    has no identity configured (as `dvc exp run` needs none), the tagger is "ganpipe retrain"."""
    tags = fetch.record(version)["tags"]
    known = _git(Path(repo), "var", "GIT_COMMITTER_IDENT", check=False).returncode == 0
    who = [] if known else ["-c", "user.name=ganpipe retrain", "-c", "user.email=ganpipe@localhost"]
    for tag in tags:
        existing = _git(Path(repo), "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}", check=False)
        if existing.returncode == 0:
            if existing.stdout.strip() != fetch.git_rev:
                raise RuntimeError(f"tag {tag} exists on {existing.stdout.strip()[:10]}, not on the promoted "
                                   f"{fetch.git_rev[:10]}; delete or rename it and promote again")  # fmt: skip
            continue
        message = f"ganpipe registry {version} ({fetch.experiment})"
        _git(Path(repo), *who, "tag", "-a", tag, fetch.git_rev, "-m", message)
    return tags


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def push_if_remote(repo: str, experiment: str | None = None, tags: list[str] | None = None) -> bool:
    """Share the run, as far as the repository's remotes allow. With a git remote: `dvc exp push`
    of `experiment`'s git ref and `git push` of `tags`. With a DVC remote: `ganpipe push`, which
    sends the workspace's outputs (the run's: the promoted model's files), the run-cache and every
    file it names, so other machines restore these runs instead of rerunning them. True when DVC
    data reached a DVC remote."""
    path, log = Path(repo), get_run_logger()
    remote, storage = git_remote(path), dvc_remote(path)
    if remote is not None and experiment:  # the ref only: its files go with `ganpipe push` below
        _dvc(path, "exp", "push", "--no-cache", "--no-run-cache", remote, experiment)
        log.info("pushed experiment %s to git remote %s", experiment, remote)
    if remote is not None and tags:
        _git(path, "push", remote, *(f"refs/tags/{t}" for t in tags))
        log.info("pushed tags %s to git remote %s", ", ".join(tags), remote)
    if storage is None:
        log.info("no DVC remote: the run's files stay in this repository's cache")
        return False
    res = subprocess.run([sys.executable, "-m", "flows.cli", "push"], cwd=path, env=tool_env(), capture_output=True,
                         text=True)  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"ganpipe push failed ({res.returncode}):\n{res.stderr[-3000:]}")
    log.info("%s: %s", storage, res.stdout.strip())
    return True


def _ensure_limit(name: str) -> None:
    """Create the global concurrency limit (1 slot) the first time; afterwards leave it be."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def metrics_rows(candidate: dict, champion: dict | None) -> list[dict]:
    keys = [("eval", "fid"), ("eval", "fid_vs_floor"), ("eval", "precision"), ("eval", "recall"), ("eval", "kid"),
            ("eval", "fid_position"), ("eval", "l1"), ("eval", "l1_gain"),
            ("export", "max_abs_diff"), ("export", "parity_passed")]  # fmt: skip
    rows = []
    for group, key in keys:
        if key in candidate.get(group, {}) or (champion and key in champion.get(group, {})):
            rows.append({"metric": f"{group}.{key}", "candidate": candidate.get(group, {}).get(key),
                         "champion": (champion or {}).get(group, {}).get(key)})  # fmt: skip
    return rows


@flow(name="ganpipe-retrain")
def retrain_flow(
    repo: str = ".",
    registry: str = str(layout.REGISTRY),
    margin: float | None = None,
    force: bool = False,
    overrides: list[str] | None = None,
) -> dict:
    """Retrain when inputs changed (or `force`), promote only a better model.

    `margin` defaults to `retrain.fid_margin` in params.yaml; `overrides` are
    `dvc exp run -S` assignments, e.g. ["train.steps=6000"].
    """
    log = get_run_logger()
    repo_path = Path(repo).resolve()
    margin = load_params(repo_path / layout.PARAMS).retrain.fid_margin if margin is None else margin
    reg = Registry(repo_path / registry)
    _ensure_limit(CONCURRENCY_LIMIT)
    with concurrency(CONCURRENCY_LIMIT, occupy=1, timeout_seconds=6 * 3600):
        champion = reg.champion()
        changed = changed_stages(str(repo_path))
        if not changed and champion is not None and not force and not overrides:
            reason = f"inputs unchanged since the last run; {champion} stays champion"
            log.info(reason)
            create_markdown_artifact(key="ganpipe-retrain", markdown=f"**No retraining**: {reason}")
            return {"action": "skipped", "reason": reason, "champion": champion}
        name = f"retrain-{time.strftime('%Y%m%d-%H%M%S')}"
        run_experiment(str(repo_path), name, list(overrides or []))
        candidate = candidate_metrics(str(repo_path))
        decision = compare(candidate, reg.champion_metrics(), margin)
        tags: list[str] = []
        if decision.promote:
            fetch = fetch_source(repo_path, name)
            if fetch is None:
                log.info("no git remote or no DVC remote: the version records no place to fetch it from")
            version = promote(str(repo_path), registry, f"{name}: {decision.reason}", fetch)
            tags = tag_version(str(repo_path), fetch, version) if fetch else []
            action, new_champion = "promoted", version
        else:
            action, new_champion = "kept", champion
        pushed = push_if_remote(str(repo_path), name, tags)
        summary = {"action": action, "reason": decision.reason, "experiment": name, "champion": new_champion,
                   "previous_champion": champion, "changed_stages": changed, "pushed": pushed,
                   "tags": tags}  # fmt: skip
        log.info("%s: %s", action, decision.reason)
        create_markdown_artifact(
            key="ganpipe-retrain",
            markdown=f"**{action.capitalize()}** ({name}): {decision.reason}.\n\nChampion: `{new_champion}`"
            + (f" (was `{champion}`)" if champion != new_champion else ""),
            description="the retraining decision",
        )
        create_table_artifact(
            key="ganpipe-retrain-metrics",
            table=metrics_rows(candidate, reg.info(champion)["metrics"] if champion else None),
            description="candidate vs champion",
        )
        return summary


class _Runner(Runner):
    def handle_sigterm(self, *args) -> None:
        """SIGTERM (kill, systemd, docker stop) stops serving as Ctrl-C does: the run in progress is
        cancelled, the schedule paused. (Prefect 3.8's handler calls the synchronous `stop()` inside
        the running event loop, where it never runs: the process waited for the run to finish.)"""
        self._stopping = asyncio.get_running_loop().create_task(self.astop())


def serve_retraining(cron: str | None, repo: str, registry: str, margin: float | None, name: str) -> None:
    """Serve the retraining deployment from this process (what flow.serve does): on `cron`, or only
    when triggered if cron is None. One run at a time, whoever triggers it. Stopped (Ctrl-C or
    SIGTERM), it pauses the schedule so no runs pile up unserved; the next start resumes it."""
    runner = _Runner(name=name, pause_on_shutdown=True, limit=1)
    runner.add_flow(retrain_flow, name=name, cron=cron, concurrency_limit=1,
                    parameters=dict(repo=str(Path(repo).resolve()), registry=registry, margin=margin),
                    description="Retrain as a DVC experiment; promote only if FID improves by the margin")  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.start())


if __name__ == "__main__":
    print(json.dumps(retrain_flow(), indent=2))
