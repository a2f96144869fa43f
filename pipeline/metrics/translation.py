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
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from pipeline import layout
from pipeline.artifacts import read_json
from pipeline.config import Params
from pipeline.data.dataset import load_split, to_float
from pipeline.grid import labelled_figure, save_figure
from pipeline.metrics import reference
from pipeline.metrics.distance import fid_kid
from pipeline.metrics.features import extractor_for
from pipeline.models.artifact import load_translators
from pipeline.runtime import seed_everything, set_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GRID_ROWS = 16


@torch.no_grad()
def translate_all(g: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([g(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])


def paired_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean per-image L1, PSNR (dB) and SSIM of `pred` against `target`, both in [-1, 1]."""
    psnr = peak_signal_noise_ratio(pred, target, data_range=2.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=2.0, reduction="none")
    return {
        "l1": float((pred - target).abs().mean()),
        "psnr": float(psnr.clamp(max=100.0).mean()),  # identical images would be +inf
        "ssim": float(ssim.mean()),
    }


def evaluate_translation(
    params: Params,
    generator_path: Path | str = layout.GENERATOR,
    evaluator_path: Path | str = layout.EVALUATOR,
    prepared_dir: Path | str = layout.PREPARED,
    comparison_png: Path | str | None = layout.EVAL_COMPARISON,
    reference_path: Path | str | None = None,
) -> dict:
    """The metrics dict written to metrics/eval.json for task: translate (real images' features
    from `reference_path`, the reference stage's output, when it exists)."""
    ecfg = params.evaluate
    set_threads()
    seed_everything(params.seed)
    gens, _ = load_translators(generator_path)
    extractor = extractor_for(ecfg.feature_extractor, evaluator_path, ecfg.batch_size)
    paired = bool(read_json(Path(prepared_dir) / "manifest.json").get("paired"))
    val_a = to_float(load_split(prepared_dir, "val", "A").images)
    val_b = to_float(load_split(prepared_dir, "val", "B").images)
    out_ab = translate_all(gens["AB"], val_a)

    refs = reference.features(params, prepared_dir, extractor, reference_path)
    ref = refs["train_B"]
    subset = min(ecfg.kid_subset_size, len(val_a), len(val_b))

    def distance(features: torch.Tensor) -> dict:
        return fid_kid(ref, features, subset, ecfg.kid_subsets, params.seed)

    model = distance(extractor(out_ab, label="translated"))
    floor, identity = distance(refs["val_B"]), distance(refs["val_A"])
    span = identity["fid"] - floor["fid"]
    result: dict = {
        "task": "translate",
        "direction": "AB",
        "fid": round(model["fid"], 4),
        "kid": round(model["kid_mean"], 6),
        "fid_real_floor": round(floor["fid"], 4),
        "fid_identity_baseline": round(identity["fid"], 4),
        "kid_identity_baseline": round(identity["kid_mean"], 6),
        "fid_position": round((model["fid"] - floor["fid"]) / span, 4) if span > 0 else None,
        "num_val_a": len(val_a),
        "num_val_b": len(val_b),
        "num_reference": len(ref),
        "resolution": int(val_a.shape[-1]),
        "feature_extractor": f"{extractor.description}, of domain B",
        "extractor_sha256": extractor.identity["extractor_sha256"],
    }
    if paired:
        ours, base = paired_scores(out_ab, val_b), paired_scores(val_a, val_b)
        for k in ("l1", "psnr", "ssim"):
            result[k] = round(ours[k], 5)
            result[f"{k}_identity_baseline"] = round(base[k], 5)
        result["l1_gain"] = round(1.0 - ours["l1"] / base["l1"], 4) if base["l1"] > 0 else None
    if "BA" in gens:
        rec_a = translate_all(gens["BA"], out_ab)
        rec_b = translate_all(gens["AB"], translate_all(gens["BA"], val_b))
        result["cycle_l1_aba"] = round(float((rec_a - val_a).abs().mean()), 5)
        result["cycle_l1_bab"] = round(float((rec_b - val_b).abs().mean()), 5)
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
    """The translation metrics as a reader should see them."""
    lines = [
        f"Held-out pairs: {m['num_val_a']} inputs; FID in {m['feature_extractor']} vs {m['num_reference']} real B.",
        "",
        "| | translated A→B | untranslated input | real B (floor) |",
        "|---|---|---|---|",
        f"| FID | **{m['fid']:.3f}** | {m['fid_identity_baseline']:.3f} | {m['fid_real_floor']:.3f} |",
    ]
    if "l1" in m:
        lines += [
            f"| L1 | **{m['l1']:.4f}** | {m['l1_identity_baseline']:.4f} | 0 |",
            f"| PSNR (dB) | **{m['psnr']:.2f}** | {m['psnr_identity_baseline']:.2f} | ∞ |",
            f"| SSIM | **{m['ssim']:.4f}** | {m['ssim_identity_baseline']:.4f} | 1 |",
            "",
            f"L1 gain over the untranslated input: {m['l1_gain']:.1%}",
        ]
    if "cycle_l1_aba" in m:
        lines.append(f"Cycle error |G_BA(G_AB(a)) - a|: {m['cycle_l1_aba']:.4f}; B→A→B: {m['cycle_l1_bab']:.4f}")
    return "\n".join(lines)
