"""Write docs/parameters.md from the code that defines the parameters, so the page cannot drift.

Every key, its type, default, allowed values and meaning come from pipeline/config.py (the
pydantic fields: Literal choices, ge/gt/le/lt bounds, descriptions, the logging-only mark); which
stages read it comes from the `params:` lists of dvc.yaml.

    python docs/parameters.py           # rewrite docs/parameters.md
    python docs/parameters.py --check   # exit 1 if docs/parameters.md is not what this writes
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, whichever one is installed

from annotated_types import Ge, Gt, Le, Lt, MinLen  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from pipeline.config import Params, logging_only  # noqa: E402

PAGE = ROOT / "docs" / "parameters.md"
COMMAND = "python docs/parameters.py"

HEADER = f"""\
# Parameters

All in `params.yaml`, validated by `pipeline/config.py` (pydantic): unknown keys and bad values
stop the run with the key named, e.g. `params.yaml: train.stepz: unknown key`. A params file that
is empty, not text or not a mapping is refused in one line naming it (an empty file is far more
often a truncated one than a wish for every default; write `{{}}` for that). A key given twice
(a second `train:` group would replace the first), YAML aliases (`*name`), nesting deeper than
64 levels and integers of more than 4,300 digits are refused the same way, with the line.

A key left out takes its default below; `params.yaml` sets some keys to other values. *Read by*
lists the DVC stages that depend on the key (`dvc.yaml`'s `params:`): changing it reruns those
stages. Keys marked *logging only* change what a run logs or where it runs, never its weights:
they are outside the resume fingerprint, so changing one continues a run from its checkpoints.
`train.steps` is outside it too, unless the objective's schedule depends on the run length (the
learning rates decaying over `train.steps`).

This page is generated: edit the fields in `pipeline/config.py` (or `dvc.yaml`), then run
`{COMMAND}`.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return " or ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    return annotation.__name__


def _choices(annotation: Any) -> list[Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return list(args)
    if origin in (typing.Union, types.UnionType):
        return [c for a in args for c in _choices(a)]
    return []


def _value(v: Any) -> str:
    if isinstance(v, str):
        return f"`{v}`" if v else '`""`'
    if isinstance(v, tuple):
        v = list(v)
    return f"`{json.dumps(v, ensure_ascii=False)}`"


BOUNDS = ((Ge, "ge", "≥"), (Gt, "gt", ">"), (Le, "le", "≤"), (Lt, "lt", "<"))


def _allowed(field: FieldInfo) -> str:
    parts = [_value(c) for c in _choices(field.annotation)]
    for item in field.metadata:
        for kind, attr, sign in BOUNDS:
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attr)}")
        if isinstance(item, MinLen):
            parts.append(f"at least {item.min_length} item{'s' if item.min_length > 1 else ''}")
    return ", ".join(parts)


def leaf_keys(section: type[BaseModel] = Params, prefix: str = "") -> list[tuple[str, FieldInfo, bool]]:
    """(dotted key, field, logging only) for every leaf key, in the order config.py declares them."""
    out = []
    quiet = logging_only(section)
    for name, field in section.model_fields.items():
        if _is_section(field.annotation):
            out += leaf_keys(field.annotation, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field, name in quiet))
    return out


def stages_reading(dvc: dict) -> dict[str, list[str]]:
    """Each stage -> the params entries it depends on (a group name stands for all its keys)."""
    out = {}
    for stage, spec in dvc.get("stages", {}).items():
        entries = []
        for entry in spec.get("params", []):
            if isinstance(entry, str):
                entries.append(entry)
            elif isinstance(entry, dict):  # {params.yaml: [keys]} (other files than params.yaml are not ours)
                entries += [k for file, ks in entry.items() if file == "params.yaml" for k in ks or []]
        out[stage] = entries
    return out


def _readers(key: str, reading: dict[str, list[str]]) -> str:
    names = [s for s, entries in reading.items() if any(key == e or key.startswith(e + ".") for e in entries)]
    return ", ".join(names) or "no stage"


def render(dvc_yaml: Path = ROOT / "dvc.yaml") -> str:
    reading = stages_reading(yaml.safe_load(dvc_yaml.read_text()))
    groups: dict[str, list[tuple[str, FieldInfo, bool]]] = {}
    for key, field, quiet in leaf_keys():
        groups.setdefault(key.split(".")[0] if "." in key else "", []).append((key, field, quiet))
    lines = [HEADER]
    for group, rows in groups.items():
        lines.append(f"## `{group}`\n" if group else "## Top level\n")
        doc = Params.model_fields[group].annotation.__doc__ if group else None
        if doc:
            lines.append(" ".join(doc.split()) + "\n")
        lines.append("| key | type | default | allowed | read by | meaning |")
        lines.append("|---|---|---|---|---|---|")
        for key, field, quiet in rows:
            meaning = ("*logging only.* " if quiet else "") + (field.description or "").replace("*", "\\*")
            default = field.get_default(call_default_factory=True)
            lines.append(f"| `{key}` | {_cell(_type_text(field.annotation))} | {_cell(_value(default))} | "
                         f"{_cell(_allowed(field))} | {_readers(key, reading)} | {_cell(meaning)} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
