"""Reading params files and overlays, and the messages that name the file and key.

The YAML reader is PyYAML's safe loader, made strict. PyYAML has no option for any of these, so
its SafeLoader is subclassed at its documented extension points (compose_node, construct_mapping,
the int constructor):
- a key given twice in one mapping is refused, naming the key and both lines: a second `train:`
  group silently replaced the first, every train setting back to its default;
- aliases (`*name`) are refused: nine anchors of ten aliases each stand for 10^9 values in a few
  kilobytes, and anything that walks them (a message showing the value) never ends;
- nesting deeper than YAML_MAX_DEPTH is refused (the composer recurses: 50,000 brackets raised
  RecursionError), and so is an integer longer than Python converts (ValueError).
Each refusal is a YamlRefused (a yaml.MarkedYAMLError): one line with its place.
"""

from __future__ import annotations

import reprlib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.events import AliasEvent

from pipeline.errors import UserError

YAML_MAX_DEPTH = 64  # params are three levels deep; room for lists of lists in overlays


class ConfigError(UserError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the file and key."""


_REPR = reprlib.Repr()  # the standard library's bounded repr: a few levels and items, long strings cut
_REPR.maxlevel, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 4, 40, 40, 40


def short_repr(value: Any) -> str:
    """A value for a message, bounded whatever its size (an error must never format gigabytes)."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"<{type(value).__name__}>"


def format_errors(path: Path, err: ValidationError) -> str:
    """Pydantic's errors as one line per key: the dotted key, the problem and the value given."""
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Parameters')"
        got = e.get("input")
        got_txt = "" if e["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {short_repr(got)})"
        lines.append(f"  {key}: {msg}{got_txt}")
    return "\n".join(lines)


class YamlRefused(yaml.MarkedYAMLError):
    """Valid YAML that a params file may not hold; `problem` + `problem_mark` say what and where,
    `context` the way out."""

    def __init__(self, problem: str, mark: Any, hint: str | None = None):
        super().__init__(hint, None, problem, mark)


class _ParamsLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise YamlRefused(f"an alias (*{event.anchor})", event.start_mark,
                              "params files take no YAML aliases: write the value out")  # fmt: skip
        if self._depth >= YAML_MAX_DEPTH:
            raise YamlRefused(f"nesting deeper than {YAML_MAX_DEPTH} levels", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise YamlRefused(f"duplicate key {short_repr(key)} (first at line {first}), again",
                                      key_node.start_mark,
                                      "give each key once: the second would replace the first")  # fmt: skip
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise YamlRefused(f"an integer of {len(node.value):,} characters", node.start_mark,
                              f"Python reads at most {sys.get_int_max_str_digits():,} digits") from None  # fmt: skip


_ParamsLoader.add_constructor("tag:yaml.org,2002:int", _ParamsLoader.construct_yaml_int)


def _load_yaml(text: str) -> Any:
    """The YAML document in `text`; yaml.YAMLError (with a mark) for anything refused above."""
    return yaml.load(text, Loader=_ParamsLoader)  # a SafeLoader subclass: safe


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where it is."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if problem and mark is not None:
        context = getattr(err, "context", None)
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" + (f" ({context})" if context else "")
    return str(err).splitlines()[0]


def read_yaml(path: Path | str, what: str = "pass --params") -> Any:
    """The YAML document in `path`, or ConfigError naming the file when it is missing, unreadable,
    not UTF-8 text (a binary file, say) or not YAML."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root or {what})") from None
    except OSError as err:  # a folder, no permission, ...
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                          "is it a binary file?") from None  # fmt: skip
    try:
        return _load_yaml(text)
    except YamlRefused as err:  # a duplicate key, an alias, too deep, an integer too long
        raise ConfigError(f"{path}: {_yaml_problem(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
