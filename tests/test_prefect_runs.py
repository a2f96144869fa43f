"""What a pipeline run looks like in Prefect, read back through its API: run names and tags, the
stage runs linked to the pipeline run that started them, the library's log records, artifacts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import sys

import pytest
import yaml
from conftest import REPO, TINY, make_repo, sh

pytestmark = pytest.mark.integration

STAGES = ["prepare", "evaluator", "reference", "train", "evaluate", "export"]
EXP = "seed-one"


def api(read):
    """`read(client)` against the Prefect API, from synchronous code."""
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await read(client)

    return asyncio.run(go())


def runs_tagged(tag: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    return api(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))))


def logs_of(run_id) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return api(lambda c: c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))))


@pytest.fixture(scope="module")
def exp_run(tmp_path_factory, prefect_api):
    """`ganpipe exp` of an overlay (another seed) in a tiny repository, as a user runs it, and what
    to expect: the params hash of params.yaml as the experiment ran and the git revision."""
    repo = make_repo(tmp_path_factory.mktemp("exp"), TINY)
    overlay = tmp_path_factory.mktemp("overlay") / "seed.yaml"
    overlay.write_text("seed: 1\n")
    res = sh([sys.executable, "-m", "flows.cli", "exp", str(overlay), "--name", EXP], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["seed"] == 1  # dvc exp run left its params there
    params = hashlib.sha256((repo / "params.yaml").read_bytes()).hexdigest()[:7]
    rev = sh(["git", "rev-parse", "--short", "HEAD"], repo).stdout.strip()
    return repo, res.stdout + res.stderr, params, rev


def expected(stage: str, params: str, rev: str) -> tuple[str, list[str]]:
    name = f"{stage} · exp {EXP} · params {params} · git {rev}"
    return name, ["ganpipe", f"stage:{stage}", f"exp:{EXP}", f"params:{params}", f"git:{rev}"]


def run_of(stage: str):
    (run,) = [r for r in runs_tagged(f"exp:{EXP}") if f"stage:{stage}" in r.tags]
    return run


def test_the_pipeline_run_is_named_and_tagged_after_the_experiment(exp_run, prefect_api):
    _, out, params, rev = exp_run
    run = run_of("pipeline")
    assert (run.name, run.tags) == expected("pipeline", params, rev)
    assert run.state.is_completed()
    assert f"Prefect API: {prefect_api}" in out and "temporary" not in out  # a server it did not start


def test_each_stage_run_is_a_child_of_the_pipeline_runs_dvc_task(exp_run):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    _, _, params, rev = exp_run
    parent = run_of("pipeline")
    tasks = api(lambda c: c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent.id]))))
    (run_dvc,) = [t for t in tasks if t.name.startswith("run_dvc")]
    children = api(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[run_dvc.id]))))  # fmt: skip
    assert sorted(r.name for r in children) == sorted(expected(stage, params, rev)[0] for stage in STAGES)
    for stage in STAGES:
        run = run_of(stage)
        assert (run.name, run.tags, run.parent_task_run_id) == (*expected(stage, params, rev), run_dvc.id)
        assert run.state.is_completed()


def test_progress_logged_by_the_library_reaches_the_train_runs_logs(exp_run):
    lines = [(log.level, log.message) for log in logs_of(run_of("train").id) if log.name == "pipeline.training.runner"]
    steps = TINY["train"]["steps"]
    assert any(level == logging.INFO and f"step {steps}/{steps} (100%)" in msg for level, msg in lines), lines


def test_the_pipeline_run_publishes_a_metrics_table_and_the_sample_grid(exp_run):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    repo = exp_run[0]
    run = run_of("pipeline")
    found = api(lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
        any_=[run.id]))))  # fmt: skip
    arts = {a.key: a for a in found}
    assert {k: arts[k].type for k in ("ganpipe-pipeline", "ganpipe-metrics", "ganpipe-samples")} == {
        "ganpipe-pipeline": "markdown", "ganpipe-metrics": "table", "ganpipe-samples": "image"}  # fmt: skip
    table = arts["ganpipe-metrics"].data
    rows = {r["metric"]: r["value"] for r in (json.loads(table) if isinstance(table, str) else table)}
    metrics = {"eval": json.loads((repo / "metrics/eval.json").read_text()),
               "export": json.loads((repo / "metrics/export.json").read_text())}  # fmt: skip
    assert rows["eval.fid"] == metrics["eval"]["fid"] and rows["export.parity_passed"] is True
    # the picture itself, so the UI shows it on any machine (tests/test_pipeline_dvc.py decodes it)
    assert arts["ganpipe-samples"].data.startswith("data:image/png;base64,")


def test_library_records_reach_prefect_at_info_and_above_while_a_stage_flow_runs(tmp_path, prefect_api):
    """Records of `pipeline.*` loggers in a flow run through the stage entry, without DVC."""
    from prefect.logging.handlers import APILogHandler

    from flows.stage import run_stage, stage_flow

    @stage_flow("probe")
    def probe(params_path: str):
        for level in (logging.DEBUG, logging.INFO, logging.WARNING):
            logging.getLogger("pipeline.probe").log(level, "probe %s", logging.getLevelName(level))

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    library = logging.getLogger("pipeline")
    before = (library.level, list(library.handlers))
    assert run_stage(probe, ["--params", str(tmp_path / "params.yaml")]) == 0
    assert (library.level, library.handlers) == before  # attached only while the flow ran
    APILogHandler().flush()
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    (run,) = api(lambda c: c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["probe"]))))
    assert sorted(log.message for log in logs_of(run.id) if log.name == "pipeline.probe") == [
        "probe INFO", "probe WARNING"]  # fmt: skip
