"""evaluator: data/prepared/ -> models/evaluator.pt (the FID feature network)."""

from __future__ import annotations

import dataclasses
import sys

from flows.stage import run_stage, stage_flow, stage_task
from pipeline import layout
from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.dataset import load_split
from pipeline.metrics.evaluator import train_evaluator
from pipeline.runtime import set_threads


@stage_task
def train_feature_network(params_path: str) -> dict:
    params = load_params(params_path)
    set_threads()
    result = train_evaluator(
        params.evaluate.evaluator,
        load_split(layout.PREPARED, "train", params.feature_domain),
        load_split(layout.PREPARED, "val", params.feature_domain),
        layout.EVALUATOR,
        seed=params.seed,
    )
    metrics = dataclasses.asdict(result)
    write_json(layout.EVALUATOR_METRICS, metrics)
    print(f"evaluator val accuracy {result.val_accuracy:.4f} ({result.task})")
    return metrics


@stage_flow("evaluator")
def evaluator_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """Train the small CNN whose features FID and KID are computed in."""
    return train_feature_network(params_path)


if __name__ == "__main__":
    sys.exit(run_stage(evaluator_flow))
