"""The whole chain: `dvc repro` (each stage runs its own flow), then a metrics summary.

DVC decides which stages are stale and caches their outputs; each stage's command starts
its Prefect flow, so one pipeline run shows up as this flow plus one flow run per stage
that actually ran, each a child of the `run_dvc` task run (flows/stage.py). Run it with
`ganpipe repro`, which provides a local Prefect server.
"""

from __future__ import annotations

import base64
import itertools
import subprocess
import sys
from pathlib import Path

from prefect import flow
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.states import Failed, State

from flows.stage import child_env, run_labels, stage_task
from pipeline import layout
from pipeline.artifacts import read_json, read_metrics


@stage_task
def run_dvc(dvc_args: list[str]) -> int | State:
    """`dvc <args>` (repro, exp run) as a child process, output streamed. A non-zero exit fails
    this task (a Failed state, not an exception: DVC has already printed why, no traceback adds to it)."""
    print("$ dvc " + " ".join(dvc_args))
    # each stage's flow run becomes a child of this task run
    code = subprocess.run([sys.executable, "-m", "dvc", *dvc_args], env=child_env(experiment_name(dvc_args))).returncode
    if code != 0:
        return Failed(message=f"dvc {dvc_args[0]} failed with exit code {code} (DVC's output above says why)")
    return code


def experiment_name(dvc_args: list[str]) -> str | None:
    """The experiment `dvc exp run --name NAME` runs (None for dvc repro, or a name DVC picks)."""
    names = [b for a, b in itertools.pairwise(dvc_args) if a in ("--name", "-n")]
    return names[0] if dvc_args[:2] == ["exp", "run"] and names else None


def label_this_run(stage: str, experiment: str | None) -> None:
    """Name and tag the running flow run as `run_labels` does, from params.yaml as it is now."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    name, tags = run_labels(stage, layout.PARAMS, experiment)
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name, tags=tags)


def metric_rows(metrics: dict, prefix: str = "") -> list[dict]:
    """Every value of the metrics files, a row each: {"metric": "eval.fid", "value": 12.3}."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += metric_rows(value, f"{prefix}{key}.")
        else:
            value = ", ".join(map(str, value)) if isinstance(value, list) else value
            rows.append({"metric": prefix + key, "value": value})
    return rows


@stage_task
def collect_metrics() -> dict:
    """Every metrics/*.json the stages wrote, keyed by file stem."""
    return read_metrics(".")


def export_details() -> dict | None:
    """reports/export_details.json, when the export stage has written it."""
    return read_json(layout.EXPORT_DETAILS) if layout.EXPORT_DETAILS.is_file() else None


def summary_markdown(metrics: dict, details: dict | None = None) -> str:
    """The metrics in words; `details` (reports/export_details.json) adds the export's latency."""
    # imported here: pipeline.tasks pulls in torch, torchmetrics and onnx (about 5 s on 2 cores),
    # which `ganpipe repro` would otherwise pay before DVC even starts
    from pipeline.tasks import report

    parts = []
    if "eval" in metrics:
        ev = metrics["eval"]
        if "feature_extractor" in ev:  # with metrics/eval_details.json: the whole evaluation, as the report has it
            parts.append(report(ev))
        else:  # eval.json from git alone (a clone that has not pulled the evaluate stage's outputs)
            numbers = ", ".join(f"{k} {v}" for k, v in ev.items())
            parts.append(f"{layout.EVAL_METRICS}: {numbers} ({layout.EVAL_DETAILS} is not in this workspace: "
                         "`dvc pull` or a run of the evaluate stage brings it)")  # fmt: skip
    if "evaluator" in metrics:
        parts.append(f"Evaluator val accuracy: {metrics['evaluator']['val_accuracy']:.4f}")
    if "export" in metrics:
        e, details = metrics["export"], details or {}
        # generate: one model; translate: one entry per direction under "directions"
        per_model = e.get("directions", {"": e})
        for direction, m in per_model.items():
            line = (f"ONNX parity{' ' + direction if direction else ''}: max |onnx - torch| = {m['max_abs_diff']:.2e} "
                    f"(tolerance {m['tolerance']}, {'passed' if m['parity_passed'] else 'FAILED'})")  # fmt: skip
            if lat := details.get("directions", {}).get(direction, details).get("latency_ms_batch16"):
                line += (f"; batch-16 latency: onnxruntime {lat['onnxruntime']} ms, torch {lat['torch']} ms "
                         f"on {', '.join(m['providers'])}")  # fmt: skip
            parts.append(line)
    return "\n\n".join(parts)


@flow(name="ganpipe-pipeline")
def pipeline_flow(dvc_args: list[str] | None = None) -> dict | State:
    """Bring every stage up to date with `dvc repro` (or `dvc exp run ...`), then publish the metrics."""
    args = list(dvc_args or ["repro"])
    ran = run_dvc(args, return_state=True)
    if experiment := experiment_name(args):  # the run's params hash: params.yaml as `dvc exp run` set it for the stages
        label_this_run("pipeline", experiment)
    if not ran.is_completed():
        return Failed(message=ran.message)
    metrics = collect_metrics()
    if metrics:
        create_markdown_artifact(
            key="ganpipe-pipeline",
            markdown=summary_markdown(metrics, export_details()),
            description=f"metrics after dvc repro ({layout.PARAMS})",
        )
        create_table_artifact(key="ganpipe-metrics", table=metric_rows(metrics), description="metrics/*.json, flat")
    if layout.SAMPLES.is_file():
        publish_samples(layout.SAMPLES)
    return metrics


SAMPLES_INLINE_MAX = 2_000_000  # bytes of PNG the artifact carries itself; a bigger picture is linked


def publish_samples(path: Path) -> None:
    """The sample grid as a Prefect image artifact, the picture itself inside it (a data: URL), so
    the UI shows it on any machine; a picture too big for that is linked as a local file."""
    data = path.read_bytes()
    if len(data) > SAMPLES_INLINE_MAX:
        create_link_artifact(key="ganpipe-samples", link=path.resolve().as_uri(), link_text=str(path),
                             description="the sample grid, on the machine that ran it (too big to show)")  # fmt: skip
        return
    create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(data).decode("ascii"),
                          key="ganpipe-samples", description=f"{path}: samples of the trained generator")  # fmt: skip
