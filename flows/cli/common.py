"""What every `ganpipe` command group shares: argparse types that refuse a bad number when parsing,
the help formatter that shows defaults (and defaults owned elsewhere, looked up only when shown),
and one-line errors for output files."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

SEED_MAX = 2**63 - 1  # the service's bound too: a seed gives the same images from either


def int_arg(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], refused at parse time with the bound named
    ("argument --nrow: must be at least 1, got -1"), instead of failing later with a traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def fraction_arg(text: str) -> float:
    """An argparse type for a relative margin: 0 <= x < 1, as retrain.fid_margin in params.yaml."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1 (0.02 = 2%), got {text}")
    return value


def seconds_arg(text: str) -> float:
    """An argparse type for a wait in seconds: a finite number >= 0, refused at parse time otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, got {text}")
    return value


def output_file(path: Path | str, flag: str) -> Path:
    """Refuse an existing folder as an output file up front, before any work (the atomic writer
    would refuse it too, but only after the images were made)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; {flag} takes the file to write")
    return path


def write_error(path: Path, err: OSError) -> UserError:
    # the folder that could not be made, say; not the temporary file beside `path`
    where = f" ({err.filename})" if err.filename and Path(err.filename).parent != Path(path).parent else ""
    return UserError(f"{path}: cannot write: {err.strerror or err}{where}")


class Deferred:
    """An option's default owned elsewhere (the service's settings, the decoder's limit), looked up
    only when --help shows it or a handler needs it, so that parsing imports nothing heavy. A flag
    left out keeps this object as its value: the handler tells it from a given one with `given`."""

    def __init__(self, lookup: Callable[[], Any], shown: Callable[[Any], str] = str):
        self.lookup, self.shown = lookup, shown

    def value(self) -> Any:
        return self.lookup()

    def __str__(self) -> str:
        return self.shown(self.value())


def given(value: Any) -> bool:
    """Whether a flag was given (its value is not a `Deferred` default)."""
    return not isinstance(value, Deferred)


def resolve(value: Any) -> Any:
    """A flag's value: the one given, or its `Deferred` default looked up."""
    return value.value() if isinstance(value, Deferred) else value


def square(pixels: int) -> str:
    """A pixel count as the side of the square it makes, where it makes one: 1048576 -> 1024x1024."""
    side = math.isqrt(pixels)
    return f"{side}x{side}" if side * side == pixels else str(pixels)


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def with_defaults(*args, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(*args, formatter_class=DefaultsShown, **kwargs)
