"""The trained-model artifact, `models/generator.pt`: its spec, how it is written, how it is read.

An image generator is saved as {"spec", "state_dict", "steps"}; a style-transfer model as
{"spec", "state_dicts" (by direction), "steps"}. The spec holds what it takes to rebuild the
networks without params.yaml. Training writes it; evaluation and export read it, through
here and the architecture registry only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import catalog
from pipeline.artifacts import save_torch
from pipeline.config import ModelConfig, Params
from pipeline.errors import MissingInput
from pipeline.models import build_generator, directions


def model_spec(params: Params) -> dict:
    exclude = catalog.spec_exclusions(params.model.arch)  # other families' own keys (catalog.Arch.own_keys)
    if not params.model.noise_classes:  # left out where off: the artifacts of every other model stay as they were
        exclude.add("classes_from_noise")
    return params.model.model_dump(mode="json", exclude=exclude)


def generator_spec(params: Params, image_size: int, channels: int, classes: list[str]) -> dict:
    """What it takes to rebuild G from generator.pt without params.yaml."""
    spec = {
        "model": model_spec(params),
        "image_size": image_size,
        "channels": channels,
        "num_classes": len(classes) if params.model.conditional else 0,  # the labels the model takes
        "class_names": classes if params.model.conditional else [],
    }
    if params.model.noise_classes:
        spec["noise_classes"] = len(classes)  # the classes it was trained on, drawn from z
    return spec


def built_classes(spec: dict) -> int:
    """The number of classes G's networks were built for (what build_generator needs to rebuild it)."""
    return spec["num_classes"] or spec.get("noise_classes", 0)


def translator_spec(params: Params, image_size: int, channels: int, size_multiple: int, min_size: int) -> dict:
    return {
        "task": "translate",
        "model": model_spec(params),
        "image_size": image_size,
        "channels": channels,
        "directions": directions(params.model.arch),
        "size_multiple": size_multiple,
        "min_size": min_size,
        "num_classes": 0,
        "class_names": [],
    }


def save_model(path: Path | str, spec: dict, weights: dict, steps: int) -> None:
    """Write the artifact atomically; `weights` is one state dict, or one per direction."""
    key = "state_dicts" if spec.get("task") == "translate" else "state_dict"
    save_torch(path, {"spec": spec, key: weights, "steps": steps})


def _read(path: Path | str, device: str | torch.device) -> dict:
    if not Path(path).is_file():
        raise MissingInput(f"{path}: trained generator missing; run the train stage first")
    return torch.load(path, map_location=device, weights_only=True)


def load_generator(path: Path | str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the EMA image generator (eval mode) and return it with its spec."""
    blob = _read(path, device)
    spec = blob["spec"]
    g = build_generator(ModelConfig(**spec["model"]), spec["image_size"], spec["channels"], built_classes(spec))
    g.load_state_dict(blob["state_dict"])
    return g.to(device).eval(), spec


def load_translators(path: Path | str, device: str | torch.device = "cpu") -> tuple[dict[str, torch.nn.Module], dict]:
    """Rebuild the EMA translators (eval mode), by direction, with their spec."""
    blob = _read(path, device)
    spec = blob["spec"]
    if spec.get("task") != "translate":
        raise MissingInput(f"{path}: holds an image generator, not a translator; rerun the train stage")
    gens = {}
    for direction in spec["directions"]:
        g = build_generator(ModelConfig(**spec["model"]), spec["image_size"], spec["channels"])
        g.load_state_dict(blob["state_dicts"][direction])
        gens[direction] = g.to(device).eval()
    return gens, spec
