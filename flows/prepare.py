"""prepare: data source -> data/prepared/ (+ reports/data_report.json)."""

from __future__ import annotations

import sys

from flows.stage import run_stage, stage_flow, stage_task
from pipeline import layout
from pipeline.config import load_params
from pipeline.data.prepare import prepare


@stage_task
def prepare_dataset(params_path: str) -> dict:
    cfg = load_params(params_path).data
    result = prepare(cfg, layout.PREPARED, layout.DATA_REPORT)
    print(f"prepared {result.counts} images from {cfg.source!r}; skipped {len(result.skipped)}")
    return {"counts": result.counts, "skipped": len(result.skipped)}


@stage_flow("prepare")
def prepare_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """Decode, validate, resize and split the data source into data/prepared/."""
    return prepare_dataset(params_path)


if __name__ == "__main__":
    sys.exit(run_stage(prepare_flow))
