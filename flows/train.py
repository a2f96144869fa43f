"""train: data/prepared/ -> models/generator.pt (EMA), checkpoints, dvclive/, sample grid."""

from __future__ import annotations

import sys

from flows.stage import run_stage, stage_flow, stage_task
from pipeline import layout
from pipeline.config import Params, load_params
from pipeline.training.runner import train
from pipeline.training.worker import Rendezvous, launch, needs_launcher, torchrun_args


@stage_task
def train_models(params_path: str) -> dict:
    params = load_params(params_path)
    rdzv = Rendezvous.from_env()  # settings of this launch (GANPIPE_RDZV_*), not of the model
    if needs_launcher(params.train, rdzv):  # DDP, machines, restarts: torchrun runs the training
        launch(params_path, params.train, rdzv)  # every line printed here reaches the flow run's log
        return {"steps": params.train.steps, "machines": params.train.nnodes,
                "processes_per_machine": params.train.nproc_per_node}  # fmt: skip
    result = train(params)
    print(f"trained {result.steps} steps (resumed from {result.resumed_from}) in {result.seconds:.0f}s")
    return {"steps": result.steps, "resumed_from": result.resumed_from, "generator": str(result.generator)}


def check_launch(params: Params) -> None:
    """Refuse launch settings that cannot work, before Prefect or torchrun starts."""
    torchrun_args(params.train, Rendezvous.from_env())


@stage_flow("train")
def train_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """Train the models, resuming from a matching checkpoint when one exists."""
    return train_models(params_path)


if __name__ == "__main__":
    sys.exit(run_stage(train_flow, check=check_launch))
