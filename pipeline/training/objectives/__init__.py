"""Training objectives: each one file that owns its networks, optimisers, step, state and
sample panel. The runner (pipeline/training/runner.py) never knows which one it runs.

A new objective is a module here with a class following `Objective`, plus one line in
`OBJECTIVES`; the architectures it trains name it in the plug-in catalog (`pipeline/catalog.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from pipeline import catalog
from pipeline.config import Params
from pipeline.training.distributed import World
from pipeline.training.objectives.cyclegan import CycleGanObjective
from pipeline.training.objectives.gan import GanObjective
from pipeline.training.objectives.pix2pix import Pix2PixObjective
from pipeline.training.objectives.r3gan import R3GanObjective
from pipeline.training.objectives.stylegan2 import StyleGan2Objective

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Objective(Protocol):
    length_matters: bool  # its learning rates follow train.steps: a run of another length is another run

    def __init__(self, params: Params, prepared: Path, device: torch.device, precision: torch.dtype,
                 world: World) -> None: ...  # fmt: skip

    def step(self, step: int, log_now: bool) -> None:
        """One optimiser step of every network (0-based `step`); `log_now`: keep what scalars() reports."""

    def losses(self) -> tuple[float, float]:
        """(loss_D, loss_G) of the last step, averaged across processes: a host sync."""

    def scalars(self, loss_d: float, loss_g: float) -> dict[str, float]:
        """The curves to log at a logging step, in order, named train/<what>."""

    def samples(self, step: int) -> tuple[np.ndarray, dict[str, float], list[str]]:
        """The sample panel (an HxW[xC] uint8 image), scalars measured on it, and warnings."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def trained_modules(self) -> list[torch.nn.Module]:
        """The networks being trained (checked to agree across processes at the end)."""

    def networks(self) -> list[torch.nn.Module]:
        """Every network it holds, EMA copies included (their buffers are made rank 0's in every
        process before anything is saved)."""

    def model_artifact(self) -> tuple[dict, dict]:
        """(spec, weights) of the EMA model to save as models/generator.pt."""

    def save_samples(self, path: Path) -> None:
        """The final sample picture (reports/samples.png)."""

    def walk_figure(self, steps: int) -> Figure | None:
        """The generator along walks between fixed seeds after `steps` steps (DVCLive's walk.png, a plot
        of the train stage), or None where the model has no latent to walk (translation)."""


OBJECTIVES: dict[str, type[Objective]] = {
    "gan": GanObjective,
    "stylegan2": StyleGan2Objective,
    "r3gan": R3GanObjective,
    "cyclegan": CycleGanObjective,
    "pix2pix": Pix2PixObjective,
}


def objective_name(params: Params) -> str:
    """The objective that trains `model.arch` (the plug-in catalog says which)."""
    return catalog.arch(params.model.arch).objective


def make_objective(params: Params, prepared: Path, device: torch.device, precision: torch.dtype,
                   world: World) -> Objective:  # fmt: skip
    return OBJECTIVES[objective_name(params)](params, prepared, device, precision, world)
