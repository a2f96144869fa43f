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

Every metric is a function registered in `GENERATION` (pipeline/metrics/registry.py) with
its columns and anchors; `evaluate` builds the image sets and the registry measures them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import layout
from pipeline.config import ModelConfig, Params
from pipeline.dataset import PreparedSplit, load_split, to_float
from pipeline.grid import save_figure
from pipeline.metrics import modes, reference
from pipeline.metrics.distance import fid, fid_kid, prdc
from pipeline.metrics.features import EvaluatorFeatures, extractor_for
from pipeline.metrics.figures import comparison_figure, memorisation_figure, samples_figure
from pipeline.metrics.probe import generate
from pipeline.metrics.registry import (
    FEATURE_SPACE,
    MODEL,
    Column,
    ImageSet,
    Registry,
    feature_space,
    few_images_warning,
)
from pipeline.models import build_generator
from pipeline.models.artifact import built_classes, load_generator
from pipeline.runtime import device_of, resolve_device, seed_everything, set_threads

GENERATION = Registry()
REAL_FLOOR, CEILING = "real_floor", "untrained_ceiling"  # the anchor sets
COPY_QUANTILE = 0.05


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


@dataclass
class GenerationRun:
    """What every generation metric shares: the params, the networks, the training split's features."""

    params: Params
    evaluator: EvaluatorFeatures  # the classifier: confidence, class accuracy, in any feature space
    extractor: Any  # the FID feature space
    g: nn.Module
    gspec: dict
    train: PreparedSplit
    val: PreparedSplit
    val_idx: np.ndarray  # the held-out images of the real-data floor
    ref: torch.Tensor  # features of the training split
    ref_subset: torch.Tensor  # as many of them as samples (precision/recall compare sets of one size)
    sets: dict[str, ImageSet] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.val_idx)

    @property
    def classes(self) -> bool:  # the evaluator is a classifier of the data's classes (not of each channel's)
        return self.evaluator.spec["task"] == "classes" and not self.evaluator.spec.get("per_channel")

    @property
    def conditional(self) -> bool:
        """Whether each sample has a class to be judged by: asked for (a conditional model) or named by its
        noise (classes from the noise), and the evaluator classifies the data's classes."""
        return bool(self.gspec["num_classes"] or self.gspec.get("noise_classes")) and self.classes

    @property
    def class_names(self) -> list[str]:
        """The classes' names: a conditional model's own, else the training data's (a model with classes from
        the noise was trained on them, in that order)."""
        return self.gspec["class_names"] or list(self.train.classes)

    @torch.no_grad()
    def probabilities(self, s: ImageSet) -> torch.Tensor:
        """The evaluator's class probabilities (its own features, whatever the FID extractor)."""
        own = s.features if self.extractor is self.evaluator else self.evaluator(s.images)
        return self.evaluator.net.classifier(own.to(self.device)).softmax(1).cpu()

    @property
    def device(self) -> torch.device:
        return device_of(self.g)

    def nearest_train(self, s: ImageSet) -> tuple[torch.Tensor, ...]:
        """Each image's distance to its nearest training image in feature space, and that image's index."""
        if "nearest" not in s.cache:
            s.cache["nearest"] = nearest(s.features, self.ref)
        return s.cache["nearest"]


def _fid_vs_floor(raw: dict[str, dict]) -> float | None:
    model, floor = round(raw[MODEL]["fid"], 4), round(raw[REAL_FLOOR]["fid"], 4)
    return round(model / floor, 2) if floor > 0 else None


@GENERATION.register(
    Column("fid", "Fréchet distance to the training split's features", label="FID", anchors=(REAL_FLOOR, CEILING),
           compared=True),
    Column("kid", "kernel inception distance to the training split (unbiased: can be slightly negative)",
           fmt=".5f", digits=6, anchors=(REAL_FLOOR, CEILING), source="kid_mean", label="KID"),
    Column("kid_std", "KID's spread over its random subsets", better="", digits=6, in_table=False),
    derived={"fid_vs_floor": _fid_vs_floor},
)  # fmt: skip
def distance(run: GenerationRun, s: ImageSet) -> dict[str, float]:
    ecfg = run.params.evaluate
    return fid_kid(run.ref, s.features, ecfg.kid_subset_size, ecfg.kid_subsets, run.params.seed)


@GENERATION.register(
    Column("precision", "share of the samples inside the real images' k-NN manifold (do they look real?)",
           better="higher", anchors=(REAL_FLOOR,), compared=True),
    Column("recall", "share of real images inside the samples' manifold (is the variety there?)", better="higher",
           anchors=(REAL_FLOOR,), compared=True),
    Column("density", "how many real neighbourhoods hold each sample, on average (1 for real data)",
           better="higher", anchors=(REAL_FLOOR,)),
    Column("coverage", "share of real images with a sample among their nearest neighbours", better="higher",
           anchors=(REAL_FLOOR,), compared=True),
    group="samples",
)  # fmt: skip
def manifold(run: GenerationRun, s: ImageSet) -> dict[str, float]:
    return prdc(run.ref_subset, s.features)


@GENERATION.register(
    Column("confidence", "the evaluator's mean top-class probability", better="higher", anchors=(REAL_FLOOR,)),
    Column("classifier_score", "the Inception Score computed with the evaluator", better="higher",
           anchors=(REAL_FLOOR,)),
    group="samples",
    when=lambda run: run.classes,
)  # fmt: skip
def classifier(run: GenerationRun, s: ImageSet) -> dict[str, float]:
    return classifier_scores(run.probabilities(s))


def _interval_note(m: dict) -> list[str]:
    lo, hi = m["fid_ci95"]
    return [f"- FID 95% bootstrap interval (resampling the generated set): {lo:.3f} to {hi:.3f}."]


@GENERATION.register(
    Column("fid_ci95", "95% bootstrap interval of FID, resampling the generated set", better="", in_table=False),
    note=_interval_note,
)
def fid_ci95(run: GenerationRun, s: ImageSet) -> dict[str, tuple[float, float]]:
    return {"fid_ci95": bootstrap_fid(run.ref, s.features, seed=run.params.seed)}


def _copy_note(m: dict) -> list[str]:
    return [f"- Memorisation: {m['copy_share']:.1%} of the samples are nearer to a training image than 95% "
            f"of real held-out images are (about {COPY_QUANTILE:.0%} if nothing is copied)."]  # fmt: skip


@GENERATION.register(
    Column("copy_share", "share of samples nearer to a training image than 95% of held-out images are",
           in_table=False),
    note=_copy_note,
)  # fmt: skip
def memorisation(run: GenerationRun, s: ImageSet) -> dict[str, float]:
    return {"copy_share": copy_share(run.nearest_train(s)[0], run.nearest_train(run.sets[REAL_FLOOR])[0])}


@GENERATION.register(
    Column("num_samples", "images per set", better="", in_table=False),
    Column("num_reference", "training images the distances are measured to", better="", in_table=False),
    Column("real_split", "which real images each number is measured against", better="", in_table=False),
    Column("generator", "which weights were scored", better="", in_table=False),
    *FEATURE_SPACE,
)  # fmt: skip
def setup(run: GenerationRun, s: ImageSet) -> dict[str, Any]:
    """Not a score: what every number above was measured with."""
    return {
        "num_samples": run.n,
        "num_reference": len(run.train.labels),
        "real_split": "training split (FID, KID, precision, recall); held-out split (the real-data floor)",
        "generator": f"EMA weights at the last step ({run.params.train.steps}, models/generator.pt)",
    } | feature_space(run.extractor, run.gspec["image_size"])


def _accuracy_note(m: dict) -> list[str]:
    return [f"- Samples classified as their class (asked for, or named by their noise): {m['class_accuracy']:.1%}."]


@GENERATION.register(
    Column("class_accuracy", "share of samples classified as their class (asked for, or named by the noise)",
           better="higher", in_table=False, compared=True),
    Column("class_accuracy_per_class", "the same, per class", better="higher", in_table=False),
    when=lambda run: run.conditional,
    note=_accuracy_note,
)  # fmt: skip
def class_accuracy(run: GenerationRun, s: ImageSet) -> dict[str, Any]:
    """The share of samples the evaluator classifies as their class: the class a conditional model was
    asked for, or the one a model with classes from the noise read from each z."""
    net, names, labels = run.evaluator.net, run.class_names, s.labels
    pred = torch.cat([net(torch.as_tensor(s.images[i : i + 1024]).to(run.device)).argmax(1).cpu()
                      for i in range(0, len(s.images), 1024)])  # fmt: skip
    hit = (pred == labels).float()
    return {
        "class_accuracy": float(hit.mean()),
        "class_accuracy_per_class": {names[c]: float(hit[labels == c].mean()) for c in range(len(names))},
    }


def _per_class_note(m: dict) -> list[str]:
    if not m["fid_per_class"]:
        return []
    names = list(m["fid_per_class"])
    return ["", "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
            "| FID | " + " | ".join(f"{m['fid_per_class'][c]:.2f}" for c in names) + " |",
            "| floor | " + " | ".join(f"{m['fid_per_class_real_floor'][c]:.2f}" for c in names) + " |",
            "| classified as asked | " + " | ".join(f"{m['class_accuracy_per_class'][c]:.0%}" for c in names)
            + " |"]  # fmt: skip


@GENERATION.register(
    Column("fid_per_class", "FID of each class's samples against its training images", in_table=False),
    Column("fid_per_class_real_floor", "the same for each class's held-out images", in_table=False),
    when=lambda run: run.conditional,
    note=_per_class_note,
)  # fmt: skip
def per_class_fid(run: GenerationRun, s: ImageSet) -> dict[str, dict[str, float]]:
    """FID of each class's samples against that class's training images, beside its floor (the
    class's held-out images). Few images per class make both noisy: compare a class with its floor."""
    real, ref_labels = run.sets[REAL_FLOOR], np.asarray(run.train.labels)
    out: dict[str, dict[str, float]] = {"fid_per_class": {}, "fid_per_class_real_floor": {}}
    for c, name in enumerate(run.class_names):
        ref_c, fake_c, real_c = run.ref[ref_labels == c], s.features[s.labels == c], real.features[real.labels == c]
        if min(len(ref_c), len(fake_c), len(real_c)) < 2:
            continue
        out["fid_per_class"][name] = fid(ref_c, fake_c)
        out["fid_per_class_real_floor"][name] = fid(ref_c, real_c)
    return out


def _modes_note(m: dict) -> list[str]:
    return [f"- Modes of the stacked digits: {m['modes']} of {m['mode_count']} covered, reverse KL from uniform "
            f"{m['mode_kl']:.3f}, in {m['mode_samples']:,} samples (real stacked held-out digits: "
            f"{m['modes_real_floor']} and {m['mode_kl_real_floor']:.3f})."]  # fmt: skip


@GENERATION.register(
    Column("modes", "modes covered: distinct triples of the channels' digits among the samples", better="higher",
           fmt=".0f", anchors=(REAL_FLOOR,), compared=True),
    Column("mode_kl", "reverse KL of the samples' mode histogram from uniform (0: every mode equally often)",
           anchors=(REAL_FLOOR,), compared=True),
    Column("mode_count", "the modes there are: classes per channel to the power of the channels", better="",
           in_table=False),
    Column("mode_samples", "samples the modes are counted in (the real floor: as many restacked held-out images)",
           better="", in_table=False),
    when=lambda run: bool(run.evaluator.spec.get("per_channel")),
    note=_modes_note,
)  # fmt: skip
def mode_coverage(run: GenerationRun, s: ImageSet) -> dict[str, Any]:
    """Stacked digits (pipeline/metrics/modes.py): the modes MODE_SAMPLES samples cover and how evenly,
    the real floor measured the same way on held-out digits stacked afresh."""
    spec, seed, net = run.evaluator.spec, run.params.seed, run.evaluator.net
    if s is run.sets[REAL_FLOOR]:
        classes = modes.restack(modes.channel_classes_of(net, run.val.images), modes.MODE_SAMPLES, seed)
    else:
        latent_dim, batch = run.gspec["model"]["latent_dim"], run.params.evaluate.batch_size
        images = generate(run.g, modes.MODE_SAMPLES, latent_dim, run.gspec["num_classes"], seed + 3, batch)[0]
        classes = modes.channel_classes_of(net, images)
    num_classes = spec["num_outputs"]
    count = num_classes ** spec["per_channel"]
    ids = modes.mode_ids(classes, num_classes)
    return {**modes.mode_stats(ids, count), "mode_count": count, "mode_samples": modes.MODE_SAMPLES}


def evaluate(
    params: Params,
    generator_path: Path | str = layout.GENERATOR,
    evaluator_path: Path | str = layout.EVALUATOR,
    prepared_dir: Path | str = layout.PREPARED,
    comparison_png: Path | str | None = layout.EVAL_COMPARISON,
    figures_dir: Path | str | None = layout.FIGURES,
    reference_path: Path | str | None = None,
) -> dict:
    """Compute the metrics dict written to metrics/eval.json (every metric in `GENERATION`, on the
    samples and on its anchor sets); draw reports/eval_comparison.png and, in `figures_dir`,
    samples.png and memorisation.png. The real images' features come from `reference_path`
    (the reference stage's output) when it exists."""
    run = _run(params, generator_path, evaluator_path, prepared_dir, reference_path)
    result = GENERATION.measure(run, run.sets)
    if comparison_png:
        k = min(32, run.n)
        real = to_float(np.asarray(run.val.images[run.val_idx[:k]])).numpy()
        save_figure(comparison_figure(real, run.sets[MODEL].images[:k].numpy(), result), comparison_png)
    if figures_dir:
        fakes = run.sets[MODEL]
        fake_nn, fake_nearest = run.nearest_train(fakes)
        closest = torch.argsort(fake_nn)[: min(8, run.n)]
        nearest_train = to_float(np.asarray(run.train.images[np.asarray(fake_nearest[closest])])).numpy()
        save_figure(memorisation_figure(fakes.images[closest].numpy(), nearest_train, result, COPY_QUANTILE),
                    Path(figures_dir) / layout.MEMORISATION.name)  # fmt: skip
        save_figure(samples_figure(run.g, run.gspec, params.seed + 2, names=run.class_names),
                    Path(figures_dir) / layout.SAMPLE_GRID.name)  # fmt: skip
    return result


def _run(params: Params, generator_path: Path | str, evaluator_path: Path | str, prepared_dir: Path | str,
         reference_path: Path | str | None) -> GenerationRun:  # fmt: skip
    """Load the networks and the real features, and build the samples' set and every anchor set."""
    ecfg = params.evaluate
    set_threads()
    seed_everything(params.seed)
    device = resolve_device(ecfg.device, "evaluate.device")
    evaluator = EvaluatorFeatures(evaluator_path, ecfg.batch_size, device)  # its classes: the confidence in any case
    extractor = evaluator if ecfg.feature_extractor == evaluator.name else \
        extractor_for(ecfg.feature_extractor, evaluator_path, ecfg.batch_size, device=device)  # fmt: skip
    g, gspec = load_generator(generator_path, device)
    train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    n = ecfg.num_samples or len(val.labels)
    refs = reference.features(params, prepared_dir, extractor, reference_path)
    rng = np.random.default_rng(params.seed)
    val_idx = np.sort(rng.choice(len(val.labels), size=n, replace=n > len(val.labels)))
    ref_subset = refs["train"][np.sort(rng.choice(len(refs["train"]), size=min(n, len(refs["train"])), replace=False))]
    run = GenerationRun(params, evaluator, extractor, g, gspec, train, val, val_idx, refs["train"], ref_subset)
    num_classes, latent_dim = gspec["num_classes"], gspec["model"]["latent_dim"]
    fakes, fake_labels = generate(g, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)
    run.sets[MODEL] = ImageSet(fakes, extractor(fakes, label="generated"), fake_labels)
    run.sets[REAL_FLOOR] = ImageSet(val.images[val_idx], refs["val"][val_idx], np.asarray(val.labels)[val_idx])
    if CEILING in GENERATION.anchors(run):
        torch.manual_seed(params.seed)  # the untrained G is the one training started from
        untrained = build_generator(ModelConfig(**gspec["model"]), gspec["image_size"], gspec["channels"],
                                    built_classes(gspec)).to(device)  # fmt: skip
        images = generate(untrained, n, latent_dim, num_classes, params.seed + 1, ecfg.batch_size)[0]
        run.sets[CEILING] = ImageSet(images, extractor(images, label="untrained"))
    return run


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
    """The headline, then the metrics table with its two anchors (from the registry), then each
    metric's note, as a reader should see it."""
    rows = [("real held-out images (floor)", REAL_FLOOR, ""), ("**trained generator**", "", "**"),
            ("untrained generator (ceiling)", CEILING, "")]  # fmt: skip
    columns = GENERATION.table_columns(m)
    table = [
        f"| {label} | " + " | ".join(c.cell(m, anchor, mark) for c in columns) + " |" for label, anchor, mark in rows
    ]
    return "\n".join([
        headline(m) + ".", "",
        f"Feature space: {m['feature_extractor']}; {m['num_samples']} images per set vs {m['num_reference']} "
        "training images (precision and recall: vs as many training images, k = 5 nearest neighbours).",
        *few_images_warning(m, m["num_samples"]), "",
        "| | " + " | ".join(c.heading for c in columns) + " |", "|---" * (len(columns) + 1) + "|", *table,
        "", *GENERATION.notes(m),
    ])  # fmt: skip
