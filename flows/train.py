"""train: data/prepared/ -> models/generator.pt (EMA), checkpoints, dvclive/, sample grid."""

from __future__ import annotations

import sys

from prefect import flow

from flows.stage import run_stage, stage_task
from pipeline import layout
from pipeline.config import load_params
from pipeline.training.runner import train
from pipeline.training.worker import launch


@stage_task
def train_models(params_path: str) -> dict:
    params = load_params(params_path)
    if params.train.nproc_per_node > 1:  # DDP: torchrun runs the same training in N processes
        launch(params_path, params.train.nproc_per_node)
        return {"steps": params.train.steps, "processes": params.train.nproc_per_node}
    result = train(params)
    print(f"trained {result.steps} steps (resumed from {result.resumed_from}) in {result.seconds:.0f}s")
    return {"steps": result.steps, "resumed_from": result.resumed_from, "generator": str(result.generator)}


@flow(name="train")
def train_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """Train the models, resuming from a matching checkpoint when one exists."""
    return train_models(params_path)


if __name__ == "__main__":
    sys.exit(run_stage(train_flow))
