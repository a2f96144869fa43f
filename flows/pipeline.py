"""The whole chain: `dvc repro` (each stage runs its own flow), then a metrics summary.

DVC decides which stages are stale and caches their outputs; each stage's command starts
its Prefect flow, so one pipeline run shows up as this flow plus one flow run per stage
that actually ran. Run it with `ganpipe repro`, which provides a local Prefect server.
"""

from __future__ import annotations

import subprocess
import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows.stage import stage_task, tool_env
from pipeline import layout
from pipeline.artifacts import read_metrics
from pipeline.tasks import report


@stage_task
def run_dvc(dvc_args: list[str]) -> int | State:
    """`dvc <args>` (repro, exp run) as a child process, output streamed. A non-zero exit fails
    this task (a Failed state, not an exception: DVC has already printed why, no traceback adds to it)."""
    print("$ dvc " + " ".join(dvc_args))
    code = subprocess.run([sys.executable, "-m", "dvc", *dvc_args], env=tool_env()).returncode
    if code != 0:
        return Failed(message=f"dvc {dvc_args[0]} failed with exit code {code} (the failing stage's message is above)")
    return code


@stage_task
def collect_metrics() -> dict:
    """Every metrics/*.json the stages wrote, keyed by file stem."""
    return read_metrics(".")


def summary_markdown(metrics: dict) -> str:
    parts = []
    if "eval" in metrics:
        parts.append(report(metrics["eval"]))
    if "evaluator" in metrics:
        parts.append(f"Evaluator val accuracy: {metrics['evaluator']['val_accuracy']:.4f}")
    if "export" in metrics:
        e = metrics["export"]
        # generate: one model; translate: one entry per direction under "directions"
        per_model = e.get("directions", {"": e})
        for direction, m in per_model.items():
            lat = m["latency_ms_batch16"]
            parts.append(
                f"ONNX parity{' ' + direction if direction else ''}: max |onnx - torch| = {m['max_abs_diff']:.2e} "
                f"(tolerance {m['tolerance']}, {'passed' if m['parity_passed'] else 'FAILED'}); batch-16 latency: "
                f"onnxruntime {lat['onnxruntime']} ms, torch {lat['torch']} ms on {', '.join(m['providers'])}"
            )
    return "\n\n".join(parts)


@flow(name="ganpipe-pipeline")
def pipeline_flow(dvc_args: list[str] | None = None) -> dict | State:
    """Bring every stage up to date with `dvc repro` (or `dvc exp run ...`), then publish the metrics."""
    args = list(dvc_args or ["repro"])
    ran = run_dvc(args, return_state=True)
    if not ran.is_completed():
        return Failed(message=ran.message)
    metrics = collect_metrics()
    if metrics:
        create_markdown_artifact(
            key="ganpipe-pipeline",
            markdown=summary_markdown(metrics),
            description=f"metrics after dvc repro ({layout.PARAMS})",
        )
    return metrics
