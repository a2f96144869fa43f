"""The prepare stage's data report: JSON (`reports/data_report.json`), a Markdown summary
beside it, every file name escaped so that it can neither forge a line nor markup, and a strip
of training images per class (or domain) that the summary shows."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.sources import safe_text
from pipeline.grid import labelled_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

THUMBS_PER_CLASS = 8
THUMB_ROWS = 20  # classes shown at most


def data_report(cfg: DataConfig, notes: dict, counts: dict, skipped: list, empty: list, seen: int, used: int) -> dict:
    """The report: files `seen` and `used`, `empty` classes, and the `notes` a source adds (glyphs dropped)."""
    return {
        "source": cfg.source,
        "path": cfg.path,
        "layout": cfg.layout,
        "on_error": cfg.on_error,
        "files_seen": seen,
        "files_used": used,
        "counts": counts,
        "skipped_by_kind": dict(Counter(s["kind"] for s in skipped)),
        "empty_classes": empty,
        "skipped": skipped,
        **notes,
    }


MIN_VAL_IMAGES = 200  # below this, FID/KID on the validation split are mostly noise


def warnings_note(cfg: DataConfig, counts: dict, coloured: int, used: int, domains: bool) -> dict:
    """{"warnings": [...]} for what a user should change before training, {} when nothing: colour
    images made grey, and a validation split too small for the quality metrics to mean much."""
    found = []
    if coloured:
        found.append(f"{coloured} of {used} images are in colour and were made grey (data.channels: 1); "
                     "set data.channels: 3 to keep their colour")  # fmt: skip
    val = counts.get("val", 0)
    if not domains and val < MIN_VAL_IMAGES:
        found.append(f"the validation split has {val} images: FID, KID, precision and recall on fewer than "
                     f"{MIN_VAL_IMAGES} are mostly noise; raise data.val_fraction (now {cfg.val_fraction}) "
                     "or add images")  # fmt: skip
    return {"warnings": found} if found else {}


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


def summary_path(report_path: Path) -> Path:
    return report_path.with_suffix(".md")


def thumbs_path(report_path: Path) -> Path:
    return report_path.with_name(f"{report_path.stem}_thumbs.png")


def class_thumbnails(prepared: Path, classes: list[str], domains: bool) -> Figure:
    """The first training images of each class, one labelled row per class (val images where the
    train split has too few), or of each domain for two-domain data (paired: pairs in columns)."""
    rows = []
    if domains:
        for d in classes:
            rows.append((f"domain {d}", np.load(prepared / f"train_{d}.npy", mmap_mode="r")[:THUMBS_PER_CLASS]))
    else:
        splits = [(np.load(prepared / f"{s}_images.npy", mmap_mode="r"), np.load(prepared / f"{s}_labels.npy"))
                  for s in ("train", "val")]  # fmt: skip
        for i, name in enumerate(classes[:THUMB_ROWS]):
            images = np.concatenate([x[np.flatnonzero(y == i)[:THUMBS_PER_CLASS]] for x, y in splits])
            label = one_line(name)
            rows.append((label if len(label) <= 32 else label[:31] + "…", images[:THUMBS_PER_CLASS]))
    shown = f", the first {THUMB_ROWS} of {len(classes)} classes" if len(classes) > THUMB_ROWS else ""
    title = f"training images per {'domain' if domains else 'class'}{shown}"
    scale = 48 / rows[0][1].shape[-1]  # thumbnails 48 pixels wide whatever the image size
    return labelled_figure([x for _, x in rows], [lab for lab, _ in rows], title, THUMBS_PER_CLASS, True, scale)


def summary_markdown(report: dict, thumbs: str | None = None) -> str:
    """The readable summary; `thumbs`: the file name of the thumbnail strip beside it."""
    md = markdown_text
    lines = [
        "# Data report",
        "",
        f"- source: `{report['source']}` {md(report['path'] or '')}".rstrip(),
        f"- files seen: {report['files_seen']}, used: {report['files_used']}, skipped: {len(report['skipped'])}",
    ]
    if report.get("counts"):
        lines.append("- prepared: " + ", ".join(f"{md(k)} {v}" for k, v in report["counts"].items()))
    for name, count in report.get("skipped_by_kind", {}).items():
        lines.append(f"- {md(name)}: {count}")
    if report.get("empty_classes"):
        lines.append(f"- empty classes (left out): {', '.join(md(c) for c in report['empty_classes'])}")
    lines += [f"- **warning**: {md(w)}" for w in report.get("warnings", [])]
    if "glyphs" in report:
        g = report["glyphs"]
        lines.append(f"- glyphs: {g['kept']} of {g['requested']} characters in both fonts")
        for reason, n in g["dropped_count"].items():
            lines.append(f"  - dropped, {md(reason)}: {n}")
    if "emoji" in report:
        e = report["emoji"]
        per_block = ", ".join(f"{md(b)} {n}" for b, n in e["per_block"].items())
        lines.append(f"- emoji: {sum(e['per_block'].values())} of {e['requested']} code points drawn ({per_block})")
        if e["blank"]:
            lines.append(f"  - dropped, renders empty (no ink): {len(e['blank'])}")
    if thumbs:
        lines += ["", f"![training images per class]({thumbs})"]
    if report["skipped"]:
        lines += ["", "| file | reason |", "|---|---|"]
        lines += [f"| {md(s['file'])} | {md(s['reason'])} |" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    """`text` as one line of valid text: control and other invisible characters (newlines,
    bidi overrides) as escapes, so a file name can neither start a forged line in an error
    message or report nor hide what it is."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in safe_text(text))


_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<>|~&$])")


def markdown_text(text: str) -> str:
    """`text` as literal Markdown inside a table cell or list item: one line, with every
    character that could end the cell (|), open code, emphasis, links or HTML escaped."""
    return _MARKDOWN_INLINE.sub(r"\\\1", one_line(text))
