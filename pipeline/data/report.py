"""The prepare stage's data report: JSON (`reports/data_report.json`) and a Markdown summary
beside it, every file name escaped so that it can neither forge a line nor markup."""

import json
import re
from collections import Counter
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.data.sources import safe_text


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


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


def summary_path(report_path: Path) -> Path:
    return report_path.with_suffix(".md")


def summary_markdown(report: dict) -> str:
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
    if "glyphs" in report:
        g = report["glyphs"]
        lines.append(f"- glyphs: {g['kept']} of {g['requested']} characters in both fonts")
        for reason, n in g["dropped_count"].items():
            lines.append(f"  - dropped, {md(reason)}: {n}")
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
