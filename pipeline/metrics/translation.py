"""The `evaluate` stage for style transfer: how far the translation moves A towards B.

Every number stands next to the baseline of not translating at all (the input itself),
so the gain is plain:
  FID / KID of G_AB(val A) against real B, in the evaluator's features of domain B, beside
      the real-data floor (val B) and the identity baseline (val A untranslated);
  with ground truth (glyph pairs, paired folders): L1, PSNR and SSIM of G_AB(val A)
      against its target, on held-out pairs never seen in training, beside the same
      measures of the untranslated input; `l1_gain` = 1 - L1 / L1(identity);
  CycleGAN: the cycle-consistency error |G_BA(G_AB(a)) - a| on val A (and B -> A -> B).
PSNR and SSIM come from torchmetrics (data range 2 for images in [-1, 1]).

Every metric is a function registered in `TRANSLATION` (pipeline/metrics/registry.py) with
its columns and anchors; `evaluate_translation` builds the image sets and the registry
measures them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from pipeline import layout
from pipeline.artifacts import read_json
from pipeline.config import Params
from pipeline.dataset import load_split, to_float
from pipeline.grid import labelled_figure, save_figure
from pipeline.metrics import reference
from pipeline.metrics.distance import fid_kid
from pipeline.metrics.features import extractor_for
from pipeline.metrics.registry import (
    FEATURE_SPACE,
    MODEL,
    Column,
    ImageSet,
    Registry,
    feature_space,
    few_images_warning,
)
from pipeline.models.artifact import load_translators
from pipeline.runtime import device_of, resolve_device, seed_everything, set_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GRID_ROWS = 16
TRANSLATION = Registry()
REAL_FLOOR, IDENTITY = "real_floor", "identity_baseline"  # the anchor sets: real B, the untranslated input


@torch.no_grad()
def translate_all(g: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """G's output for every image, in batches on G's device; on the CPU."""
    device = device_of(g)
    batches = range(0, len(images), batch_size)
    return torch.cat([g(images[i : i + batch_size].to(device)).float().cpu() for i in batches])


def paired_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean per-image L1, PSNR (dB) and SSIM of `pred` against `target`, both in [-1, 1]."""
    psnr = peak_signal_noise_ratio(pred, target, data_range=2.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=2.0, reduction="none")
    return {
        "l1": float((pred - target).abs().mean()),
        "psnr": float(psnr.clamp(max=100.0).mean()),  # identical images would be +inf
        "ssim": float(ssim.mean()),
    }


@dataclass
class TranslationRun:
    """What every translation metric shares: the translators, the held-out pairs, real B's features."""

    params: Params
    gens: dict[str, torch.nn.Module]
    val_a: torch.Tensor
    val_b: torch.Tensor  # the targets, row by row, when the data is paired
    paired: bool
    ref: torch.Tensor  # features of the training split of B
    extractor: Any
    kid_subset_size: int


def _fid_position(raw: dict[str, dict]) -> float | None:
    """Where the translation's FID lies between real B (0) and the untranslated input (1)."""
    model, floor, identity = (raw[k]["fid"] for k in (MODEL, REAL_FLOOR, IDENTITY))
    span = identity - floor
    return round((model - floor) / span, 4) if span > 0 else None


@TRANSLATION.register(
    Column("fid", "Fréchet distance of the translations to real B's features", label="FID",
           anchors=(REAL_FLOOR, IDENTITY), compared=True),
    Column("kid", "kernel inception distance to real B", digits=6, anchors=(IDENTITY,), source="kid_mean",
           in_table=False),
    derived={"fid_position": _fid_position},
)  # fmt: skip
def distance(run: TranslationRun, s: ImageSet) -> dict[str, float]:
    return fid_kid(run.ref, s.features, run.kid_subset_size, run.params.evaluate.kid_subsets, run.params.seed)


@TRANSLATION.register(
    Column("num_val_a", "held-out inputs", better="", in_table=False),
    Column("num_val_b", "held-out images of B", better="", in_table=False),
    Column("num_reference", "training images of B the distances are measured to", better="", in_table=False),
    *FEATURE_SPACE,
)  # fmt: skip
def setup(run: TranslationRun, s: ImageSet) -> dict[str, Any]:
    """Not a score: what every number was measured with."""
    return {
        "num_val_a": len(run.val_a),
        "num_val_b": len(run.val_b),
        "num_reference": len(run.ref),
    } | feature_space(run.extractor, run.val_a.shape[-1], of="of domain B")


def _l1_gain(raw: dict[str, dict]) -> float | None:
    ours, base = raw[MODEL]["l1"], raw[IDENTITY]["l1"]
    return round(1.0 - ours / base, 4) if base > 0 else None


def _gain_note(m: dict) -> list[str]:
    return ["", f"L1 gain over the untranslated input: {m['l1_gain']:.1%}"]


@TRANSLATION.register(
    Column("l1", "mean absolute difference from the target", label="L1", fmt=".4f", digits=5,
           anchors=(IDENTITY,), ideal="0", compared=True),
    Column("psnr", "peak signal-to-noise ratio against the target", better="higher", label="PSNR (dB)",
           fmt=".2f", digits=5, anchors=(IDENTITY,), ideal="∞", compared=True),
    Column("ssim", "structural similarity to the target", better="higher", label="SSIM", fmt=".4f", digits=5,
           anchors=(IDENTITY,), ideal="1", compared=True),
    by_column=True,
    when=lambda run: run.paired,
    derived={"l1_gain": _l1_gain},
    note=_gain_note,
)  # fmt: skip
def paired(run: TranslationRun, s: ImageSet) -> dict[str, float]:
    return paired_scores(s.images, run.val_b)


def _cycle_note(m: dict) -> list[str]:
    return [f"Cycle error |G_BA(G_AB(a)) - a|: {m['cycle_l1_aba']:.4f}; B→A→B: {m['cycle_l1_bab']:.4f}"]


@TRANSLATION.register(
    Column("cycle_l1_aba", "|G_BA(G_AB(a)) - a| on held-out A", digits=5, in_table=False, compared=True),
    Column("cycle_l1_bab", "|G_AB(G_BA(b)) - b| on held-out B", digits=5, in_table=False, compared=True),
    when=lambda run: "BA" in run.gens,
    note=_cycle_note,
)  # fmt: skip
def cycle(run: TranslationRun, s: ImageSet) -> dict[str, float]:
    rec_a = translate_all(run.gens["BA"], s.images)
    rec_b = translate_all(run.gens["AB"], translate_all(run.gens["BA"], run.val_b))
    return {
        "cycle_l1_aba": float((rec_a - run.val_a).abs().mean()),
        "cycle_l1_bab": float((rec_b - run.val_b).abs().mean()),
    }


def evaluate_translation(
    params: Params,
    generator_path: Path | str = layout.GENERATOR,
    evaluator_path: Path | str = layout.EVALUATOR,
    prepared_dir: Path | str = layout.PREPARED,
    comparison_png: Path | str | None = layout.EVAL_COMPARISON,
    reference_path: Path | str | None = None,
) -> dict:
    """The metrics dict written to metrics/eval.json for task: translate: every metric in
    `TRANSLATION` on G_AB(val A) and on its anchors (real B's features from `reference_path`,
    the reference stage's output, when it exists)."""
    ecfg = params.evaluate
    set_threads()
    seed_everything(params.seed)
    device = resolve_device(ecfg.device, "evaluate.device")
    gens, _ = load_translators(generator_path, device)
    extractor = extractor_for(ecfg.feature_extractor, evaluator_path, ecfg.batch_size, device=device)
    paired = bool(read_json(Path(prepared_dir) / "manifest.json").get("paired"))
    val_a = to_float(load_split(prepared_dir, "val", "A").images)
    val_b = to_float(load_split(prepared_dir, "val", "B").images)
    out_ab = translate_all(gens["AB"], val_a)
    refs = reference.features(params, prepared_dir, extractor, reference_path)
    subset = min(ecfg.kid_subset_size, len(val_a), len(val_b))
    run = TranslationRun(params, gens, val_a, val_b, paired, refs["train_B"], extractor, subset)
    sets = {
        MODEL: ImageSet(out_ab, extractor(out_ab, label="translated")),
        REAL_FLOOR: ImageSet(val_b, refs["val_B"]),
        IDENTITY: ImageSet(val_a, refs["val_A"]),
    }
    result = {"task": "translate", "direction": "AB"} | TRANSLATION.measure(run, sets)
    if comparison_png:
        k = min(GRID_ROWS, len(val_a))
        panels = [val_a[:k].numpy(), out_ab[:k].numpy()] + ([val_b[:k].numpy()] if paired else [])
        save_figure(translation_figure(panels, result), comparison_png)
    return result


def translation_figure(panels: list[np.ndarray], m: dict) -> Figure:
    """reports/eval_comparison.png: columns input | output (| target, with ground truth) of held-out
    images, titled with the FID (and L1) of the translation."""
    l1 = f", L1 {m['l1']:.4f}" if "l1" in m else ""
    title = f"held-out A→B translations, FID {m['fid']:.3f}{l1}"
    return labelled_figure(panels, ["input", "output", "target"][: len(panels)], title, nrow=1, scale=2)


def translation_markdown(m: dict) -> str:
    """The translation metrics as a reader should see them: the table from the registry (a row
    per metric: translated, untranslated, real B), then each metric's note."""
    rows = [f"| {c.heading} | {c.cell(m, mark='**')} | {c.cell(m, IDENTITY)} | {c.cell(m, REAL_FLOOR)} |"
            for c in TRANSLATION.table_columns(m)]  # fmt: skip
    return "\n".join(
        [
            f"Held-out pairs: {m['num_val_a']} inputs; FID in {m['feature_extractor']} vs {m['num_reference']} real B.",
            *few_images_warning(m, m["num_val_a"]),
            "",
            "| | translated A→B | untranslated input | real B (floor) |",
            "|---|---|---|---|",
            *rows,
            *TRANSLATION.notes(m),
        ]
    )
