"""docs/style-transfer.md's table of the pix2pix preset across scripts and font pairs, and its figure
(docs/images/font_pairs.png). For each pair of fonts: prepare the glyph pairs with the preset's
params and the pair's fonts and characters, train, translate the held-out characters (never
trained on) and compare them with the targets beside the untranslated input (L1, SSIM). It calls
the library directly (no DVC, no Prefect), one pair after the other, with every core.

    python docs/font_pairs.py                        # every pair, then the table and the figure
    python docs/font_pairs.py hangul japanese        # some pairs (the others' results are kept)
    python docs/font_pairs.py --figure               # the table and figure from the results so far
    python docs/font_pairs.py japanese --set train.steps=800 --out /tmp/trial   # a trial

The fonts other than DejaVu come from Debian's packages (apt install fonts-nanum fonts-arphic-uming
fonts-arphic-ukai fonts-ipafont-gothic fonts-ipafont-mincho). Results: docs/bench/font_pairs.json;
the prepared data, models and panels under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, whichever one is installed

from flows.cli import merge_overlay  # noqa: E402
from pipeline.artifacts import write_json  # noqa: E402
from pipeline.config import parse_params, read_yaml  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.grid import save_figure  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PRESET = "configs/glyphs-pix2pix.yaml"
SHOWN = 10  # held-out characters in the figure, per pair


def _every(first: int, last: int, step: int) -> str:
    return "".join(chr(c) for c in range(first, last + 1, step))


# name -> (font A, font B, Debian package(s), characters, how the characters were picked)
PAIRS = {
    "latin": ("DejaVuSans.ttf", "DejaVuSerif.ttf", "in matplotlib", None, "Latin, Greek, Cyrillic (the default set)"),
    "hangul": (
        "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
        "/usr/share/fonts/truetype/nanum/NanumMyeongjo.ttf",
        "fonts-nanum",
        [_every(0xAC00, 0xD7A3, 22)],
        "Hangul syllables, every 22nd of U+AC00-U+D7A3",
    ),
    "chinese": (
        "/usr/share/fonts/truetype/arphic/uming.ttc#1",
        "/usr/share/fonts/truetype/arphic/ukai.ttc#1",
        "fonts-arphic-uming, fonts-arphic-ukai",
        [_every(0x4E00, 0x9F9F, 40)],
        "every 40th CJK ideograph from U+4E00",
    ),
    "japanese": (
        "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
        "/usr/share/fonts/opentype/ipafont-mincho/ipam.ttf",
        "fonts-ipafont-gothic, fonts-ipafont-mincho",
        [_every(0x3041, 0x3096, 1), _every(0x30A1, 0x30FA, 1), _every(0x4E00, 0x9F9F, 60)],
        "hiragana, katakana, every 60th CJK ideograph from U+4E00",
    ),
}


def _set(raw: dict, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep:
        raise UserError(f"--set {assignment!r}: expected key=value")
    *path, last = key.split(".")
    for part in path:
        raw = raw.setdefault(part, {})
    raw[last] = yaml.safe_load(value)


def params_for(name: str, config: str, sets: list[str]):
    font_a, font_b, package, chars, _ = PAIRS[name]
    for font in (font_a, font_b):
        if font.startswith("/") and not Path(font.split("#")[0]).is_file():
            raise UserError(f"{font}: font of pair {name!r} missing; install the Debian package(s) {package}")
    raw = merge_overlay(read_yaml(ROOT / "params.yaml") or {}, read_yaml(ROOT / config) or {})
    raw["data"]["glyphs"] = {"font_a": font_a, "font_b": font_b, **({"chars": chars} if chars else {})}
    for assignment in sets:
        _set(raw, assignment)
    return parse_params(raw, config)


def run_pair(name: str, config: str, sets: list[str], work: Path) -> dict:
    import torch

    from pipeline.data.prepare import prepare
    from pipeline.dataset import load_split, to_float
    from pipeline.metrics.translation import paired_scores, translate_all
    from pipeline.models.artifact import load_translators
    from pipeline.training.runner import TrainPaths, train

    params = params_for(name, config, sets)
    out = work / name
    prepared = out / "prepared"
    prepare(params.data, prepared, out / "prepare_report.json")
    report = json.loads((out / "prepare_report.json").read_text())
    start = time.perf_counter()
    paths = TrainPaths(prepared=prepared, checkpoints=out / "checkpoints", generator=out / "generator.pt",
                       live_dir=None, samples=out / "samples.png")  # fmt: skip
    train(params, paths, progress=True)
    seconds = time.perf_counter() - start
    gens, _ = load_translators(out / "generator.pt")
    val_a, val_b = (to_float(load_split(prepared, "val", d).images) for d in "AB")
    with torch.no_grad():
        pred = translate_all(gens["AB"], val_a)
    got, untranslated = paired_scores(pred, val_b), paired_scores(val_a, val_b)
    k = min(SHOWN, len(val_a))
    np.savez_compressed(out / "panel.npz", input=val_a[:k].numpy(), output=pred[:k].numpy(), target=val_b[:k].numpy())
    return {
        "fonts": [Path(f).name for f in PAIRS[name][:2]],
        "package": PAIRS[name][2],
        "characters": PAIRS[name][4],
        "kept": report["glyphs"]["kept"],
        "requested": report["glyphs"]["requested"],
        "train": len(load_split(prepared, "train", "A").images),
        "held_out": len(val_a),
        "l1_untranslated": round(untranslated["l1"], 4),
        "l1": round(got["l1"], 4),
        "l1_lower_by": round(1 - got["l1"] / untranslated["l1"], 4),
        "ssim": round(got["ssim"], 4),
        "config": config,
        "set": sets,
        "steps": params.train.steps,
        "train_seconds": round(seconds),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
    }


def table(results: dict) -> str:
    lines = ["| font pair (Debian package) | characters (used of requested) | train / held-out | L1 not translating "
             "| L1 pix2pix | L1 lower by | SSIM | training |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in PAIRS:
        if r := results.get(name):
            lines.append(f"| {' → '.join(Path(f).stem for f in r['fonts'])} ({r['package']}) "
                         f"| {r['train'] + r['held_out']} of {r['requested']}: {r['characters']} "
                         f"| {r['train']} / {r['held_out']} | {r['l1_untranslated']:.4f} | {r['l1']:.4f} "
                         f"| {100 * r['l1_lower_by']:.1f} % | {r['ssim']:.3f} "
                         f"| {r['steps']} steps, {r['train_seconds'] / 60:.1f} min |")  # fmt: skip
    return "\n".join(lines)


def figure(results: dict, work: Path) -> Figure:
    """Input, output and target rows of each pair's first held-out characters, labelled with its gain."""
    from pipeline.grid import labelled_figure

    shown = [(np.load(work / name / "panel.npz"), results[name]) for name in PAIRS
             if name in results and (work / name / "panel.npz").is_file()]  # fmt: skip
    if not shown:
        raise UserError(f"no panels under {work}: run some pairs first")
    nrow = min(len(p["input"]) for p, _ in shown)  # the same number of characters for every pair
    panels = [np.concatenate([p[row][:nrow] for row in ("input", "output", "target")]) for p, _ in shown]
    labels = [f"{' → '.join(Path(f).stem for f in r['fonts'])}\nrows: input, pix2pix, target\n"
              f"L1 {100 * r['l1_lower_by']:.1f} % lower than input" for _, r in shown]  # fmt: skip
    title = f"The pix2pix preset on held-out characters of {len(shown)} font pair{'s' * (len(shown) > 1)}"
    return labelled_figure(panels, labels, title, nrow=nrow, stacked=True, scale=1.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("pairs", nargs="*", help=f"pairs to run: {', '.join(PAIRS)} (default: all)")
    ap.add_argument("--config", default=PRESET, help="the params overlay (default: %(default)s)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    ap.add_argument("--figure", action="store_true", help="only the table and figure from the results so far")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="results (bench/font_pairs.json) and figure")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "font_pairs", help="prepared data and models")
    args = ap.parse_args(argv)
    if unknown := [p for p in args.pairs if p not in PAIRS]:
        ap.error(f"unknown pair(s) {unknown}; known: {', '.join(PAIRS)}")
    results_path = args.out / "bench" / "font_pairs.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    try:
        for name in [] if args.figure else (args.pairs or list(PAIRS)):
            results[name] = run_pair(name, args.config, args.set, args.work)
            print(json.dumps({name: results[name]}), flush=True)
            write_json(results_path, results)
        save_figure(figure(results, args.work), args.out / "images" / "font_pairs.png")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
