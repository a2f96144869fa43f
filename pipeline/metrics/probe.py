"""FID while training (`train.fid_every`): how the EMA generator's samples approach the data, in
the evaluator's features, logged to DVCLive as eval/fid beside the losses.

The probe embeds the training split once, then at every probe samples `n` images from a copy
of the EMA weights with fixed noise and computes FID against it. It leaves the training
untouched: the copy is built under a forked random state and sampled with its own generator,
so a run with probes writes the same models/generator.pt as one without. The evaluate stage's
FID uses the same features and noise seed but more anchors; the probe's value at the last step
equals the evaluate stage's FID when `n` is the val split's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.dataset import load_split
from pipeline.metrics.distance import fid
from pipeline.metrics.evaluator import load_evaluator
from pipeline.metrics.features import embed
from pipeline.models import ClassesFromNoise, build_generator
from pipeline.models.artifact import built_classes
from pipeline.runtime import device_of


@torch.no_grad()
def generate(g: nn.Module, n: int, latent_dim: int, num_classes: int, seed: int, batch_size: int = 256):
    """n images from `g` with seeded noise, and their classes: class-balanced labels for conditional
    models, the class each z names for a model that draws its classes from the noise, else None."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=gen)
    labels = torch.arange(n) % num_classes if num_classes else None
    if labels is None and isinstance(g, ClassesFromNoise):  # it reads the class from z and ignores labels
        labels = ClassesFromNoise.classes(z, g.num_classes)
    g.eval()
    device = device_of(g)  # the noise is drawn on the CPU whatever the device: the same z everywhere
    chunks = [
        g(z[i : i + batch_size].to(device), None if labels is None else labels[i : i + batch_size].to(device))
        .float().cpu()
        for i in range(0, n, batch_size)
    ]  # fmt: skip
    return torch.cat(chunks), labels


class FidProbe:
    def __init__(self, evaluator_path: Path | str, prepared: Path | str, seed: int, batch_size: int = 256):
        self.net, _ = load_evaluator(evaluator_path)
        self.ref = embed(self.net, load_split(prepared, "train").images, batch_size)
        val = load_split(prepared, "val").images
        self.n, self.seed, self.batch_size = len(val), seed, batch_size
        self.floor = fid(self.ref, embed(self.net, val, batch_size))

    def __call__(self, spec: dict, weights: dict) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):  # building G draws initial weights: not from training's stream
            g = build_generator(ModelConfig(**spec["model"]), spec["image_size"], spec["channels"], built_classes(spec))
        g.load_state_dict(weights)
        fakes, _ = generate(g, self.n, spec["model"]["latent_dim"], spec["num_classes"], self.seed + 1, self.batch_size)
        value = fid(self.ref, embed(self.net, fakes, self.batch_size))
        return {"eval/fid": value, "eval/fid_vs_floor": value / self.floor if self.floor > 0 else float(np.nan)}
