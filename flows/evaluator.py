"""evaluator: data/prepared/ -> models/evaluator.pt (the FID feature network)."""

from __future__ import annotations

import dataclasses
import sys

from flows.stage import run_stage, stage_flow, stage_task
from pipeline import layout
from pipeline.artifacts import write_json
from pipeline.config import load_params
from pipeline.dataset import channel_classes, channel_labels, load_split
from pipeline.metrics.evaluator import channel_split, train_evaluator
from pipeline.runtime import set_threads


@stage_task
def train_feature_network(params_path: str) -> dict:
    params = load_params(params_path)
    set_threads()
    splits = [load_split(layout.PREPARED, s, params.feature_domain) for s in ("train", "val")]
    per_channel = 0
    if classes := channel_classes(layout.PREPARED):  # stacked digits: it learns the digit of each channel
        per_channel = splits[0].images.shape[1]
        splits = [channel_split(x, channel_labels(layout.PREPARED, x_split), classes)
                  for x, x_split in zip(splits, ("train", "val"), strict=True)]  # fmt: skip
    result = train_evaluator(params.evaluate.evaluator, *splits, layout.EVALUATOR, seed=params.seed,
                             per_channel=per_channel)  # fmt: skip
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
