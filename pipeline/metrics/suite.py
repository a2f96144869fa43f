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
from pipeline.metrics import reference
from pipeline.metrics.distance import fid, fid_kid, prdc
from pipeline.metrics.features import EvaluatorFeatures, extractor_for
from pipeline.metrics.probe import generate
from pipeline.models import build_generator
from pipeline.models.artifact import built_classes, load_generator
from pipeline.runtime import seed_everything, set_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MANIFOLD = ("precision", "recall", "density", "coverage")
CLASSIFIER = ("confidence", "classifier_score")


def classifier_scores(probs: torch.Tensor) -> dict[str, float]:
    """What the evaluator, a classifier trained on real data, makes of a set of images from its
    class probabilities [N, K]: `confidence`, its mean top-class probability (recognisable
    images score what real held-out ones do), and `classifier_score`, the Inception Score
    computed with this classifier: exp(E_x KL(p(y|x) || p(y))), between 1 (every image the same
    unsure mixture) and K (confident and spread evenly over the classes)."""
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (p.log() - marginal.log())).sum(1)
    return {"confidence": float(p.amax(1).mean()), "classifier_score": float(kl.mean().exp())}


def nearest(features: torch.Tensor, reference: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, ...]:
    """Euclidean distance from each feature row to its nearest `reference` row, and that row's index."""
    dist, idx = [], []
    for i in range(0, len(features), batch_size):
        d = torch.cdist(features[i : i + batch_size].double(), reference.double()).min(1)
        dist.append(d.values)
        idx.append(d.indices)
    return torch.cat(dist), torch.cat(idx)


COPY_QUANTILE = 0.05


def copy_share(fake_nn: torch.Tensor, real_nn: torch.Tensor) -> float:
    """The memorisation check: the share of samples nearer to their closest training image than
    95% of real held-out images are to theirs (threshold: the 5th percentile of the held-out
    images' nearest-training distances). A generator that generalises like real data scores
    about 0.05; one that reproduces its training images approaches 1."""
    threshold = float(torch.quantile(real_nn, COPY_QUANTILE))
    return float((fake_nn < threshold).double().mean())


def bootstrap_fid(ref: torch.Tensor, features: torch.Tensor, rounds: int = 50, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of FID over resamplings (with replacement) of the generated set.
    A resampled set repeats images, which alone raises FID, so the percentile interval is moved
    down by that bias (the bootstrap mean minus the FID of the set itself)."""
    gen = torch.Generator().manual_seed(seed)
    fids = [fid(ref, features[torch.randint(len(features), (len(features),), generator=gen)]) for _ in range(rounds)]
    bias = float(np.mean(fids)) - fid(ref, features)
    lo, hi = np.percentile(fids, [2.5, 97.5]) - bias
    return float(lo), float(hi)


def evaluate(
    params: Params,
    generator_path: Path | str = layout.GENERATOR,
    evaluator_path: Path | str = layout.EVALUATOR,
    prepared_dir: Path | str = layout.PREPARED,
    comparison_png: Path | str | None = layout.EVAL_COMPARISON,
    figures_dir: Path | str | None = layout.FIGURES,
    reference_path: Path | str | None = None,
) -> dict:
    """Compute the metrics dict written to metrics/eval.json; draw reports/eval_comparison.png and,
    in `figures_dir`, samples.png and memorisation.png. The real images' features come from
    `reference_path` (the reference stage's output) when it exists."""
    ecfg = params.evaluate
    set_threads()
    seed_everything(params.seed)
    evaluator = EvaluatorFeatures(evaluator_path, ecfg.batch_size)  # its classes give the confidence in any case
    extractor = (evaluator if ecfg.feature_extractor == evaluator.name
                 else extractor_for(ecfg.feature_extractor, evaluator_path, ecfg.batch_size))  # fmt: skip
    g, gspec = load_generator(generator_path)
    train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    n = ecfg.num_samples or len(val.labels)
    num_classes, latent_dim = gspec["num_classes"], gspec["model"]["latent_dim"]
    classes = evaluator.spec["task"] == "classes"

    refs = reference.features(params, prepared_dir, extractor, reference_path)
    ref = refs["train"]
    rng = np.random.default_rng(params.seed)
    val_idx = np.sort(rng.choice(len(val.labels), size=n, replace=n > len(val.labels)))
    # precision/recall compare k-NN manifolds of sets of one size: as many training images as samples
    ref_subset = ref[np.sort(rng.choice(len(ref), size=min(n, len(ref)), replace=False))]

    @torch.no_grad()
    def probabilities(images, features: torch.Tensor) -> torch.Tensor:
        """The evaluator's class probabilities (its own features, whatever the FID extractor)."""
        own = features if extractor is evaluator else evaluator(images)
        return evaluator.net.classifier(own).softmax(1)

    def score(images, features: torch.Tensor, manifolds: bool = True) -> dict:
        scores = fid_kid(ref, features, ecfg.kid_subset_size, ecfg.kid_subsets, params.seed)
        if classes:
            scores |= classifier_scores(probabilities(images, features))
        return scores | (prdc(ref_subset, features) if manifolds else {})

    real_images = val.images[val_idx]
    real_features = refs["val"][val_idx]
    floor = score(real_images, real_features)
    fakes, fake_labels = generate(g, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)
    fake_features = extractor(fakes, label="generated")
    model = score(fakes, fake_features)
    torch.manual_seed(params.seed)  # the untrained G is the one training started from
    untrained = build_generator(ModelConfig(**gspec["model"]), gspec["image_size"], gspec["channels"],
                                built_classes(gspec))  # fmt: skip
    ceiling_images = generate(untrained, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)[0]
    ceiling = score(ceiling_images, extractor(ceiling_images, label="untrained"), False)

    fake_nn, fake_nearest = nearest(fake_features, ref)
    share = copy_share(fake_nn, nearest(real_features, ref)[0])
    result = _result(model, floor, ceiling) | {
        "fid_ci95": [round(v, 4) for v in bootstrap_fid(ref, fake_features, seed=params.seed)],
        "copy_share": round(share, 4),
        "num_samples": n,
        "num_reference": len(train.labels),
        "resolution": gspec["image_size"],
        "feature_extractor": extractor.description,
        "extractor_sha256": extractor.identity["extractor_sha256"],
    }
    if num_classes and classes:
        names = gspec["class_names"]
        result |= _class_accuracy(evaluator.net, fakes, fake_labels, names)
        result |= _per_class_fid(ref, np.asarray(train.labels), fake_features, fake_labels, real_features,
                                 np.asarray(val.labels)[val_idx], names)  # fmt: skip
    if comparison_png:
        k = min(32, n)
        real = to_float(np.asarray(val.images[val_idx[:k]])).numpy()
        save_figure(comparison_figure(real, fakes[:k].numpy(), result), comparison_png)
    if figures_dir:
        closest = torch.argsort(fake_nn)[: min(8, n)]
        nearest_train = to_float(np.asarray(train.images[np.asarray(fake_nearest[closest])])).numpy()
        save_figure(memorisation_figure(fakes[closest].numpy(), nearest_train, result),
                    Path(figures_dir) / layout.MEMORISATION.name)  # fmt: skip
        save_figure(samples_figure(g, gspec, params.seed + 2), Path(figures_dir) / layout.SAMPLE_GRID.name)
    return result


def _result(model: dict, floor: dict, ceiling: dict) -> dict:
    r4, r6 = (lambda x: round(x, 4)), (lambda x: round(x, 6))
    classifier = [name for name in CLASSIFIER if name in model]
    return {
        "fid": r4(model["fid"]),
        "kid": r6(model["kid_mean"]),
        "kid_std": r6(model["kid_std"]),
        "fid_real_floor": r4(floor["fid"]),
        "fid_untrained_ceiling": r4(ceiling["fid"]),
        "kid_real_floor": r6(floor["kid_mean"]),
        "kid_untrained_ceiling": r6(ceiling["kid_mean"]),
        "fid_vs_floor": round(r4(model["fid"]) / r4(floor["fid"]), 2) if r4(floor["fid"]) > 0 else None,
        **{name: r4(model[name]) for name in MANIFOLD + tuple(classifier)},
        **{f"{name}_real_floor": r4(floor[name]) for name in MANIFOLD + tuple(classifier)},
    }


def _class_accuracy(net: nn.Module, fakes: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """The share of conditional samples the evaluator classifies as the class they were asked for."""
    pred = torch.cat([net(fakes[i : i + 1024]).argmax(1) for i in range(0, len(fakes), 1024)])
    hit = (pred == labels).float()
    return {
        "class_accuracy": round(float(hit.mean()), 4),
        "class_accuracy_per_class": {names[c]: round(float(hit[labels == c].mean()), 4) for c in range(len(names))},
    }


def _per_class_fid(ref: torch.Tensor, ref_labels: np.ndarray, fake: torch.Tensor, fake_labels: torch.Tensor,
                   real: torch.Tensor, real_labels: np.ndarray, names: list[str]) -> dict:  # fmt: skip
    """FID of each class's samples against that class's training images, beside its floor (the
    class's held-out images). Few images per class make both noisy: compare a class with its floor."""
    out: dict[str, dict[str, float]] = {"fid_per_class": {}, "fid_per_class_real_floor": {}}
    for c, name in enumerate(names):
        ref_c, fake_c, real_c = ref[ref_labels == c], fake[fake_labels == c], real[real_labels == c]
        if min(len(ref_c), len(fake_c), len(real_c)) < 2:
            continue
        out["fid_per_class"][name] = round(fid(ref_c, fake_c), 4)
        out["fid_per_class_real_floor"][name] = round(fid(ref_c, real_c), 4)
    return out


def comparison_figure(real: np.ndarray, generated: np.ndarray, m: dict) -> Figure:
    """reports/eval_comparison.png: real held-out images beside generated ones, with the numbers."""

    def line(label: str, sfx: str) -> str:
        confidence = f", confidence {m['confidence' + sfx]:.3f}" if "confidence" in m else ""
        return f"{label}\nFID {m['fid' + sfx]:.3f}{confidence}\nprecision {m['precision' + sfx]:.2f}, recall " \
            f"{m['recall' + sfx]:.2f}"  # fmt: skip

    title = f"real held-out vs generated: FID {m['fid_vs_floor']}x the real-data floor"
    return labelled_figure([real, generated], [line("real held-out", "_real_floor"), line("generated", "")], title,
                           nrow=4, scale=3)  # fmt: skip


def samples_figure(g: nn.Module, gspec: dict, seed: int, per_row: int = 8) -> Figure:
    """A grid of samples with seeded noise: a row per class, named, for conditional models; 8x8 otherwise."""
    k, latent_dim = gspec["num_classes"], gspec["model"]["latent_dim"]
    if not k:
        images = generate(g, per_row * per_row, latent_dim, 0, seed)[0].numpy()
        return labelled_figure([images], [""], f"{per_row * per_row} samples of the generator", nrow=per_row, scale=3)
    z = torch.randn(k * per_row, latent_dim, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(k).repeat_interleave(per_row)
    with torch.no_grad():
        images = g.eval()(z, labels).float().numpy()
    rows = [images[c * per_row : (c + 1) * per_row] for c in range(k)]
    return labelled_figure(rows, gspec["class_names"], f"{per_row} samples of the generator per class", nrow=per_row,
                           stacked=True, scale=3)  # fmt: skip


def memorisation_figure(samples: np.ndarray, nearest_train: np.ndarray, m: dict) -> Figure:
    """reports/figures/memorisation.png: the samples nearest to a training image, above those images."""
    title = (f"the {len(samples)} samples nearest to a training image (evaluator features); "
             f"copy share {m['copy_share']:.3f} (about {COPY_QUANTILE} if nothing is copied)")  # fmt: skip
    return labelled_figure([samples, nearest_train], ["generated", "nearest\ntraining\nimage"], title,
                           nrow=len(samples), stacked=True, scale=3)  # fmt: skip


def headline(m: dict) -> str:
    """The result in words: FID as a multiple of what real data scores, precision and recall, and
    how sure a classifier trained on real data is of the samples."""
    words = (f"FID {m['fid']:.3f} is {m['fid_vs_floor']}x the real-data floor ({m['fid_real_floor']:.3f}); "
             f"precision {m['precision']:.2f} (share of samples that look real; real data: "
             f"{m['precision_real_floor']:.2f}), recall {m['recall']:.2f} (share of the real variety reached; "
             f"real data: {m['recall_real_floor']:.2f})")  # fmt: skip
    if "confidence" in m:
        words += (f"; the evaluator is on average {m['confidence']:.1%} sure of a sample's class "
                  f"(of real held-out images: {m['confidence_real_floor']:.1%})")  # fmt: skip
    return words


def generation_markdown(m: dict) -> str:
    """The headline, then the metrics table with its two anchors, as a reader should see it."""
    rows = [("real held-out images (floor)", "_real_floor", ""), ("**trained generator**", "", "**"),
            ("untrained generator (ceiling)", "_untrained_ceiling", "")]  # fmt: skip
    columns = MANIFOLD + tuple(name for name in CLASSIFIER if name in m)
    table = [
        f"| {label} | {b}{m['fid' + sfx]:.3f}{b} | {b}{m['kid' + sfx]:.5f}{b} | "
        + " | ".join(f"{b}{m[k + sfx]:.3f}{b}" if k + sfx in m else "–" for k in columns)
        + " |"
        for label, sfx, b in rows
    ]
    notes = []
    if "fid_ci95" in m:
        lo, hi = m["fid_ci95"]
        notes.append(f"- FID 95% bootstrap interval (resampling the generated set): {lo:.3f} to {hi:.3f}.")
    if "copy_share" in m:
        notes.append(f"- Memorisation: {m['copy_share']:.1%} of the samples are nearer to a training image than 95% "
                     f"of real held-out images are (about {COPY_QUANTILE:.0%} if nothing is copied).")  # fmt: skip
    if "class_accuracy" in m:
        notes.append(f"- Samples classified as the class asked for: {m['class_accuracy']:.1%}.")
    if m.get("fid_per_class"):
        names = list(m["fid_per_class"])
        notes += ["", "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
                  "| FID | " + " | ".join(f"{m['fid_per_class'][c]:.2f}" for c in names) + " |",
                  "| floor | " + " | ".join(f"{m['fid_per_class_real_floor'][c]:.2f}" for c in names) + " |",
                  "| classified as asked | " + " | ".join(f"{m['class_accuracy_per_class'][c]:.0%}" for c in names)
                  + " |"]  # fmt: skip
    header = ["FID", "KID", *columns]
    return "\n".join([
        headline(m) + ".", "",
        f"Feature space: {m['feature_extractor']}; {m['num_samples']} images per set vs {m['num_reference']} "
        "training images (precision and recall: vs as many training images, k = 5 nearest neighbours).", "",
        "| | " + " | ".join(h.replace("_", " ") for h in header) + " |", "|---" * (len(header) + 1) + "|", *table,
        "", *notes,
    ])  # fmt: skip
