"""The `evaluate` stage's metric suite: FID/KID of the trained generator, with anchors.

A bare FID in a custom feature space means nothing to a reader, so every number comes
with two anchors measured the same way, on the same number of images:
  floor   - real held-out images (val split) vs the training split: the best a perfect
            generator could expect;
  ceiling - an untrained generator of the same architecture and seed: the worst.
`fid_position` = (fid - floor) / (ceiling - floor): 0 is as good as real data, 1 is as
bad as random weights. The reference set for all three is the whole training split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import layout
from pipeline.config import ModelConfig, Params
from pipeline.data.dataset import load_split, to_float
from pipeline.grid import save_panels
from pipeline.metrics.distance import fid_kid
from pipeline.metrics.evaluator import load_evaluator
from pipeline.models import build_generator
from pipeline.models.artifact import load_generator
from pipeline.runtime import seed_everything, set_threads


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
    floor = fid_kid(
        ref,
        embed(net, val.images[np.sort(val_idx)], ecfg.batch_size),
        ecfg.kid_subset_size,
        ecfg.kid_subsets,
        params.seed,
    )

    fakes, fake_labels = generate(g, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)
    model = fid_kid(ref, embed(net, fakes, ecfg.batch_size), ecfg.kid_subset_size, ecfg.kid_subsets, params.seed)

    torch.manual_seed(params.seed)  # the untrained G is the one training started from
    untrained = build_generator(ModelConfig(**gspec["model"]), gspec["image_size"], gspec["channels"], num_classes)
    noise, _ = generate(untrained, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)
    ceiling = fid_kid(ref, embed(net, noise, ecfg.batch_size), ecfg.kid_subset_size, ecfg.kid_subsets, params.seed)

    span = ceiling["fid"] - floor["fid"]
    result: dict = {
        "fid": round(model["fid"], 4),
        "kid": round(model["kid_mean"], 6),
        "kid_std": round(model["kid_std"], 6),
        "fid_real_floor": round(floor["fid"], 4),
        "fid_untrained_ceiling": round(ceiling["fid"], 4),
        "kid_real_floor": round(floor["kid_mean"], 6),
        "kid_untrained_ceiling": round(ceiling["kid_mean"], 6),
        "fid_position": round((model["fid"] - floor["fid"]) / span, 4) if span > 0 else None,
        "num_samples": n,
        "num_reference": len(train.labels),
        "feature_extractor": f"evaluator ({espec['task']} CNN, {espec['features']}-d features)",
    }
    if num_classes and espec["task"] == "classes":
        pred = (
            net(fakes).argmax(1)
            if len(fakes) <= 4096
            else torch.cat([net(fakes[i : i + 1024]).argmax(1) for i in range(0, len(fakes), 1024)])
        )
        hit = (pred == fake_labels).float()
        names = gspec["class_names"]
        result["class_accuracy"] = round(float(hit.mean()), 4)
        result["class_accuracy_per_class"] = {
            names[c]: round(float(hit[fake_labels == c].mean()), 4) for c in range(num_classes)
        }
    if comparison_png:
        k = min(32, n)
        real = to_float(np.asarray(val.images[np.sort(val_idx)[:k]])).numpy()
        save_panels([real, fakes[:k].numpy()], comparison_png, nrow=4, scale=3)  # real | generated
    return result


def generation_markdown(m: dict) -> str:
    """The FID/KID table with its two anchors, as a reader should see it."""
    return "\n".join(
        [
            f"Feature space: {m['feature_extractor']}; {m['num_samples']} images per set vs {m['num_reference']} "
            "training images.",
            "",
            "| | FID | KID |",
            "|---|---|---|",
            f"| real held-out images (floor) | {m['fid_real_floor']:.3f} | {m['kid_real_floor']:.5f} |",
            f"| **trained generator** | **{m['fid']:.3f}** | **{m['kid']:.5f}** |",
            f"| untrained generator (ceiling) | {m['fid_untrained_ceiling']:.3f} | {m['kid_untrained_ceiling']:.5f} |",
            "",
            f"fid_position = {m['fid_position']} (0 = as good as real data, 1 = as bad as random weights)",
        ]
    )
