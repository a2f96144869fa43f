"""evaluate: generator + evaluator + prepared data -> metrics/eval.json (what experiments are compared by),
metrics/eval_details.json (the rest), reports/report.html and .md, figures."""

from __future__ import annotations

import sys

from flows.stage import plain_run, run_stage, stage_flow, stage_task
from pipeline import layout
from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.report import build_report
from pipeline.tasks import report, task_of


@stage_task
def compute_metrics(params_path: str) -> dict:
    params = load_params(params_path)
    task = task_of(params)
    metrics = task.evaluate(params, reference_path=layout.REFERENCE)
    compared, details = task.metrics.split(metrics)
    write_json(layout.EVAL_METRICS, compared)
    write_json(layout.EVAL_DETAILS, details)
    return metrics


@stage_task
def write_report(params_path: str, metrics: dict) -> None:
    md, page = build_report(load_params(params_path).task, report(metrics))
    print(f"report: {page} (self-contained), {md}")


@stage_task
def publish_metrics(metrics: dict) -> None:
    if plain_run():  # no Prefect API: nothing to publish to
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key="ganpipe-eval", markdown=report(metrics), description="FID/KID with anchors")


@stage_flow("evaluate")
def evaluate_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """FID/KID of the EMA generator next to the real-data floor and the untrained ceiling."""
    metrics = compute_metrics(params_path)
    write_report(params_path, metrics)
    publish_metrics(metrics)
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage(evaluate_flow))
