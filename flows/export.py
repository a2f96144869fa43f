"""export: models/generator.pt -> exports/generator.onnx, model card, metrics/export.json."""

from __future__ import annotations

import sys

from prefect import flow

from flows.stage import run_stage, stage_task
from pipeline import layout
from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.tasks import task_of


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
    write_json(layout.EXPORT_METRICS, metrics)
    files = ", ".join(str(f) for f in task.onnx_files(metrics))
    print(f"exported {files}: max |onnx - torch| = {metrics['max_abs_diff']:.2e}")
    return metrics


@flow(name="export")
def export_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """Export the EMA generator to ONNX and prove it matches PyTorch."""
    return export_onnx(params_path)


if __name__ == "__main__":
    sys.exit(run_stage(export_flow))
