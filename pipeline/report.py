"""The evaluate stage's report: reports/report.md and a self-contained reports/report.html.

One Markdown text is the source of both: the Markdown file links the pictures beside it
(reports/*.png, reports/figures/*.png), the HTML page is the same text rendered by
Python-Markdown with every picture inlined as a data URI, so it opens anywhere, offline,
without its folder. Pictures: the sample grid (a class per row for conditional models),
real against generated with the numbers printed on it (input | output | target for style
transfer), the memorisation panel and the training curves from DVCLive's files.
"""

from __future__ import annotations

import base64
import csv
import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import markdown

from pipeline import layout
from pipeline.artifacts import write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (file under dvclive/plots/metrics/, its column, panel title); absent files are left out
CURVES = [
    ("train/loss_D.tsv", "loss_D", "losses"),
    ("train/loss_G.tsv", "loss_G", "losses"),
    ("train/D_real.tsv", "D_real", "D(x) and D(G(z))"),
    ("train/D_fake.tsv", "D_fake", "D(x) and D(G(z))"),
    ("train/sample_diversity.tsv", "sample_diversity", "sample diversity (x real)"),
    ("eval/fid_vs_floor.tsv", "fid_vs_floor", "FID while training (x real floor)"),  # with train.fid_every
]

STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}"""


def read_curve(path: Path, column: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one DVCLive TSV; empty lists when it is missing."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r.get(column) not in (None, "")]
    return [float(r["step"]) for r in rows], [float(r[column]) for r in rows]


def curves_figure(live_dir: Path | str = layout.DVCLIVE) -> Figure | None:
    """The training curves, one panel per quantity group, x = step; None without any curve."""
    from matplotlib.figure import Figure

    panels: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for rel, column, title in CURVES:
        steps, values = read_curve(Path(live_dir) / "plots" / "metrics" / rel, column)
        if steps:
            panels.setdefault(title, []).append((column, steps, values))
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.2), dpi=100, layout="constrained")
    for ax, (title, lines) in zip(fig.subplots(1, len(panels), squeeze=False).flat, panels.items(), strict=True):
        for column, steps, values in lines:
            ax.plot(steps, values, label=column, linewidth=1)
        ax.set_title(title, parse_math=False)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curves (DVCLive)")
    return fig


def sections(task: str) -> list[tuple[str, str, str]]:
    """(heading, picture key, caption) for the report's pictures, in reading order."""
    if task == "translate":
        return [
            ("Held-out translations", "comparison", "input | output | target of held-out images"),
            ("Training curves", "curves", "losses and discriminator outputs over training"),
        ]
    return [
        ("Samples", "samples", "samples of the EMA generator from fixed noise"),
        ("Real against generated", "comparison", "real held-out images beside generated ones, with the numbers"),
        ("Memorisation", "memorisation", "the samples nearest to a training image, above that image"),
        ("Training curves", "curves", "losses, discriminator outputs and sample diversity over training"),
    ]


def report_markdown(task: str, summary: str, pictures: dict[str, Path], src: Callable[[Path], str]) -> str:
    """The report as Markdown; `src` turns a picture's path into the link written for it."""
    title = "style transfer" if task == "translate" else "image generation"
    lines = [f"# ganpipe evaluation report: {title}", "", summary, ""]
    for heading, key, caption in sections(task):
        if key in pictures and Path(pictures[key]).is_file():
            lines += [f"## {heading}", "", f"![{caption}]({src(Path(pictures[key]))})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_report(
    task: str,
    summary: str,
    pictures: dict[str, Path],
    md_path: Path | str = layout.REPORT_MD,
    html_path: Path | str = layout.REPORT_HTML,
) -> tuple[Path, Path]:
    """Write report.md (pictures linked relative to it) and report.html (pictures inlined)."""
    md_path, html_path = Path(md_path), Path(html_path)

    def relative(p: Path) -> str:
        return Path(os.path.relpath(p, md_path.parent)).as_posix()

    md = report_markdown(task, summary, pictures, relative)
    body = markdown.markdown(report_markdown(task, summary, pictures, data_uri), extensions=["tables"])
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(md.splitlines()[0].lstrip('# '))}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
    write_bytes(md_path, md.encode())
    write_bytes(html_path, page.encode())
    return md_path, html_path


def build_report(task: str, summary: str, live_dir: Path | str = layout.DVCLIVE) -> tuple[Path, Path]:
    """Draw the training curves into reports/figures/, then write report.md and report.html from
    the pictures the evaluate stage drew (those a task does not draw are left out)."""
    from pipeline.grid import save_figure

    fig = curves_figure(live_dir)
    if fig is not None:
        save_figure(fig, layout.CURVES)
    else:
        layout.CURVES.unlink(missing_ok=True)  # no stale curves from an earlier run
    pictures = {"samples": layout.SAMPLE_GRID, "comparison": layout.EVAL_COMPARISON,
                "memorisation": layout.MEMORISATION, "curves": layout.CURVES}  # fmt: skip
    drawn = {pictures[key] for _, key, _ in sections(task)}
    for stale in layout.FIGURES.glob("*.png") if layout.FIGURES.is_dir() else []:
        if stale not in drawn:  # the folder may hold an earlier run's figures: none of another task's may stay
            stale.unlink()
    return write_report(task, summary, pictures)
