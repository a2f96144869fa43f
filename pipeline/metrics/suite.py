"""The `evaluate` stage's metric suite: FID/KID, precision/recall/density/coverage, with anchors.

A bare FID in a custom feature space means nothing to a reader, so every number comes
with two anchors measured the same way, on the same number of images:
  floor   - real held-out images (val split) vs the training split: the best a perfect
            generator could expect;
  ceiling - an untrained generator of the same architecture and seed: the worst.
The headline is FID as a multiple of the floor (`fid_vs_floor`; 1 = as good as real data)
with precision (how many samples look real) and recall (how much of the real variety they
reach), each beside what real held-out images score. The FID/KID reference is the whole
training split; precision and recall use as many training images as there are samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline import layout
from pipeline.config import ModelConfig, Params
from pipeline.data.dataset import load_split, to_float
from pipeline.grid import labelled_figure, save_figure
from pipeline.metrics.distance import fid_kid, prdc
from pipeline.metrics.evaluator import load_evaluator
from pipeline.models import build_generator
from pipeline.models.artifact import load_generator
from pipeline.runtime import seed_everything, set_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MANIFOLD = ("precision", "recall", "density", "coverage")


@torch.no_grad()
def embed(net: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Evaluator features for uint8 or [-1, 1] float images, in batches."""
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = to_float(np.asarray(chunk)) if isinstance(chunk, np.ndarray) else chunk.float()
        out.append(net.embed(x))
    return torch.cat(out)


@torch.no_grad()
def generate(g: nn.Module, n: int, latent_dim: int, num_classes: int, seed: int, batch_size: int = 256):
    """n images from `g` with seeded noise; class-balanced labels for conditional models."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=gen)
    labels = torch.arange(n) % num_classes if num_classes else None
    g.eval()
    chunks = [
        g(z[i : i + batch_size], None if labels is None else labels[i : i + batch_size]).float()
        for i in range(0, n, batch_size)
    ]
    return torch.cat(chunks), labels


def evaluate(
    params: Params,
    generator_path: Path | str = layout.GENERATOR,
    evaluator_path: Path | str = layout.EVALUATOR,
    prepared_dir: Path | str = layout.PREPARED,
    comparison_png: Path | str | None = layout.EVAL_COMPARISON,
) -> dict:
    """Compute the metrics dict written to metrics/eval.json."""
    ecfg = params.evaluate
    set_threads()
    seed_everything(params.seed)
    net, espec = load_evaluator(evaluator_path)
    g, gspec = load_generator(generator_path)
    train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    n = ecfg.num_samples or len(val.labels)
    num_classes, latent_dim = gspec["num_classes"], gspec["model"]["latent_dim"]

    ref = embed(net, train.images, ecfg.batch_size)
    rng = np.random.default_rng(params.seed)
    val_idx = rng.choice(len(val.labels), size=n, replace=n > len(val.labels))
    # precision/recall compare k-NN manifolds of sets of one size: as many training images as samples
    ref_subset = ref[np.sort(rng.choice(len(ref), size=min(n, len(ref)), replace=False))]

    def score(images, manifolds: bool = True) -> dict:
        features = embed(net, images, ecfg.batch_size)
        scores = fid_kid(ref, features, ecfg.kid_subset_size, ecfg.kid_subsets, params.seed)
        return scores | (prdc(ref_subset, features) if manifolds else {})

    floor = score(val.images[np.sort(val_idx)])
    fakes, fake_labels = generate(g, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)
    model = score(fakes)
    torch.manual_seed(params.seed)  # the untrained G is the one training started from
    untrained = build_generator(ModelConfig(**gspec["model"]), gspec["image_size"], gspec["channels"], num_classes)
    ceiling = score(generate(untrained, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)[0], False)

    result = _result(model, floor, ceiling) | {
        "num_samples": n,
        "num_reference": len(train.labels),
        "feature_extractor": f"evaluator ({espec['task']} CNN, {espec['features']}-d features)",
    }
    if num_classes and espec["task"] == "classes":
        result |= _class_accuracy(net, fakes, fake_labels, gspec["class_names"])
    if comparison_png:
        k = min(32, n)
        real = to_float(np.asarray(val.images[np.sort(val_idx)[:k]])).numpy()
        save_figure(comparison_figure(real, fakes[:k].numpy(), result["fid"]), comparison_png)
    return result


def _result(model: dict, floor: dict, ceiling: dict) -> dict:
    r4, r6 = (lambda x: round(x, 4)), (lambda x: round(x, 6))
    return {
        "fid": r4(model["fid"]),
        "kid": r6(model["kid_mean"]),
        "kid_std": r6(model["kid_std"]),
        "fid_real_floor": r4(floor["fid"]),
        "fid_untrained_ceiling": r4(ceiling["fid"]),
        "kid_real_floor": r6(floor["kid_mean"]),
        "kid_untrained_ceiling": r6(ceiling["kid_mean"]),
        "fid_vs_floor": round(r4(model["fid"]) / r4(floor["fid"]), 2) if r4(floor["fid"]) > 0 else None,
        **{name: r4(model[name]) for name in MANIFOLD},
        **{f"{name}_real_floor": r4(floor[name]) for name in MANIFOLD},
    }


def _class_accuracy(net: nn.Module, fakes: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """The share of conditional samples the evaluator classifies as the class they were asked for."""
    pred = torch.cat([net(fakes[i : i + 1024]).argmax(1) for i in range(0, len(fakes), 1024)])
    hit = (pred == labels).float()
    return {
        "class_accuracy": round(float(hit.mean()), 4),
        "class_accuracy_per_class": {names[c]: round(float(hit[labels == c].mean()), 4) for c in range(len(names))},
    }


def comparison_figure(real: np.ndarray, generated: np.ndarray, fid: float) -> Figure:
    """reports/eval_comparison.png: real held-out images beside generated ones, titled with the FID."""
    title = f"real held-out vs generated, FID {fid:.3f}"
    return labelled_figure([real, generated], ["real held-out", "generated"], title, nrow=4, scale=3)


def headline(m: dict) -> str:
    """The result in words: FID as a multiple of what real data scores, precision and recall."""
    return (f"FID {m['fid']:.3f} is {m['fid_vs_floor']}x the real-data floor ({m['fid_real_floor']:.3f}); "
            f"precision {m['precision']:.2f} (share of samples that look real; real data: "
            f"{m['precision_real_floor']:.2f}), recall {m['recall']:.2f} (share of the real variety reached; "
            f"real data: {m['recall_real_floor']:.2f})")  # fmt: skip


def generation_markdown(m: dict) -> str:
    """The headline, then the FID/KID table with its two anchors, as a reader should see it."""
    rows = [("real held-out images (floor)", "_real_floor", ""), ("**trained generator**", "", "**"),
            ("untrained generator (ceiling)", "_untrained_ceiling", "")]  # fmt: skip
    table = [
        f"| {label} | {b}{m['fid' + sfx]:.3f}{b} | {b}{m['kid' + sfx]:.5f}{b} | "
        + " | ".join(f"{b}{m[k + sfx]:.3f}{b}" if k + sfx in m else "–" for k in MANIFOLD)
        + " |"
        for label, sfx, b in rows
    ]
    return "\n".join([
        headline(m) + ".", "",
        f"Feature space: {m['feature_extractor']}; {m['num_samples']} images per set vs {m['num_reference']} "
        "training images (precision and recall: vs as many training images, k = 5 nearest neighbours).", "",
        "| | FID | KID | precision | recall | density | coverage |", "|---|---|---|---|---|---|---|", *table,
    ])  # fmt: skip
