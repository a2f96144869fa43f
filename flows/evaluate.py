"""evaluate: generator + evaluator + prepared data -> metrics/eval.json, reports/."""

from __future__ import annotations

import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.stage import run_stage, stage_task
from pipeline import layout
from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.metrics.suite import evaluate


@stage_task
def compute_metrics(params_path: str) -> dict:
    params = load_params(params_path)
    if params.task == "translate":
        from pipeline.metrics.translation import evaluate_translation

        metrics = evaluate_translation(params)
    else:
        metrics = evaluate(params)
    write_json(layout.EVAL_METRICS, metrics)
    return metrics


def metrics_markdown(m: dict) -> str:
    """The FID/KID table with its two anchors, as a reader should see it."""
    if m.get("task") == "translate":
        from pipeline.metrics.translation import translation_markdown

        return translation_markdown(m)
    return "\n".join(
        [
            f"Feature space: {m['feature_extractor']}; {m['num_samples']} images per set vs {m['num_reference']} "
            "training images.",
            "",
            "| | FID | KID |",
            "|---|---|---|",
            f"| real held-out images (floor) | {m['fid_real_floor']:.3f} | {m['kid_real_floor']:.5f} |",
            f"| **trained generator** | **{m['fid']:.3f}** | **{m['kid']:.5f}** |",
            f"| untrained generator (ceiling) | {m['fid_untrained_ceiling']:.3f} | {m['kid_untrained_ceiling']:.5f} |",
            "",
            f"fid_position = {m['fid_position']} (0 = as good as real data, 1 = as bad as random weights)",
        ]
    )


@stage_task
def publish_metrics(metrics: dict) -> None:
    create_markdown_artifact(key="ganpipe-eval", markdown=metrics_markdown(metrics), description="FID/KID with anchors")


@flow(name="evaluate")
def evaluate_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """FID/KID of the EMA generator next to the real-data floor and the untrained ceiling."""
    metrics = compute_metrics(params_path)
    publish_metrics(metrics)
    return metrics


if __name__ == "__main__":
    sys.exit(run_stage(evaluate_flow))
