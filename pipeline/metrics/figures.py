"""The generation suite's pictures: real against generated with the numbers, the sample grid
(a named row per class for conditional models) and the memorisation panel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline.grid import labelled_figure
from pipeline.metrics.probe import generate
from pipeline.noise_classes import with_classes
from pipeline.runtime import device_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def comparison_figure(real: np.ndarray, generated: np.ndarray, m: dict) -> Figure:
    """reports/eval_comparison.png: real held-out images beside generated ones, with the numbers."""

    def line(label: str, sfx: str) -> str:
        confidence = f", confidence {m['confidence' + sfx]:.3f}" if "confidence" in m else ""
        return f"{label}\nFID {m['fid' + sfx]:.3f}{confidence}\nprecision {m['precision' + sfx]:.2f}, recall " \
            f"{m['recall' + sfx]:.2f}"  # fmt: skip

    title = f"real held-out vs generated: FID {m['fid_vs_floor']}x the real-data floor"
    return labelled_figure([real, generated], [line("real held-out", "_real_floor"), line("generated", "")], title,
                           nrow=4, scale=3)  # fmt: skip


def samples_figure(g: nn.Module, gspec: dict, seed: int, per_row: int = 8, names: list[str] | None = None) -> Figure:
    """A grid of samples with seeded noise: a row per class, named (`names`, else the spec's), for conditional
    models and for models that draw their classes from the noise (latents of each class); 8x8 otherwise."""
    k, noise, latent_dim = gspec["num_classes"], gspec.get("noise_classes", 0), gspec["model"]["latent_dim"]
    if not (k or noise):
        images = generate(g, per_row * per_row, latent_dim, 0, seed)[0].numpy()
        return labelled_figure([images], [""], f"{per_row * per_row} samples of the generator", nrow=per_row, scale=3)
    count = k or noise
    z = torch.randn(count * per_row, latent_dim, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(count).repeat_interleave(per_row)
    if noise:  # the class is read from z: latents of each class
        z = with_classes(z, labels, noise)
    with torch.no_grad():
        device = device_of(g)
        images = g.eval()(z.to(device), labels.to(device)).float().cpu().numpy()
    rows = [images[c * per_row : (c + 1) * per_row] for c in range(count)]
    how = "per class" if k else "per class (drawn from latents of that class)"
    return labelled_figure(rows, names or gspec["class_names"], f"{per_row} samples of the generator {how}",
                           nrow=per_row, stacked=True, scale=3)  # fmt: skip


def memorisation_figure(samples: np.ndarray, nearest_train: np.ndarray, m: dict, quantile: float) -> Figure:
    """reports/figures/memorisation.png: the samples nearest to a training image, above those images
    (`quantile`: the copy share of a generator that copies nothing)."""
    title = (f"the {len(samples)} samples nearest to a training image (evaluator features); "
             f"copy share {m['copy_share']:.3f} (about {quantile} if nothing is copied)")  # fmt: skip
    return labelled_figure([samples, nearest_train], ["generated", "nearest\ntraining\nimage"], title,
                           nrow=len(samples), stacked=True, scale=3)  # fmt: skip
