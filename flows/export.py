"""export: models/generator.pt -> exports/generator.onnx, model card, metrics/export.json (parity),
reports/export_details.json."""

from __future__ import annotations

import sys

from flows.stage import run_stage, stage_flow, stage_task
from pipeline import layout
from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.tasks import task_of

DETAILS = ("latency_ms_batch16", "max_abs_diff_per_batch", "max_abs_diff_per_input")


def split_details(metrics: dict) -> tuple[dict, dict]:
    """The export's summary (parity passed, the worst difference, size: metrics/export.json, what the model
    registry checks) apart from the details: the difference per input and the latency, which measures the
    machine as much as the model (reports/export_details.json). Per direction for translators. Neither is a
    DVC metric: the stage fails when parity fails, so a finished export has passed; nothing here ranks models."""
    quality = {k: v for k, v in metrics.items() if k not in DETAILS}
    details = {k: v for k, v in metrics.items() if k in DETAILS}
    if "directions" in metrics:
        quality["directions"] = {d: split_details(m)[0] for d, m in metrics["directions"].items()}
        details["directions"] = {d: split_details(m)[1] for d, m in metrics["directions"].items()}
    return quality, details


@stage_task
def export_onnx(params_path: str) -> dict:
    params = load_params(params_path)
    task = task_of(params)
    metrics = task.export(
        layout.GENERATOR,
        task.export_target,
        opset=params.export.opset,
        tolerance=params.export.parity_tolerance,
        params_hash=params.section_hash("seed", "data", "augment", "model", "train"),
        card_path=layout.MODEL_CARD,
    )
    quality, details = split_details(metrics)
    write_json(layout.EXPORT_DETAILS, details)
    write_json(layout.EXPORT_METRICS, quality)
    files = ", ".join(str(f) for f in task.onnx_files(metrics))
    print(f"exported {files}: max |onnx - torch| = {metrics['max_abs_diff']:.2e}")
    return metrics


@stage_flow("export")
def export_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """Export the EMA generator to ONNX and prove it matches PyTorch."""
    return export_onnx(params_path)


if __name__ == "__main__":
    sys.exit(run_stage(export_flow))
