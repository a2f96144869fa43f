"""The metric registry: every number the evaluate stage writes is one registered function.

A metric is a function of the run (what every metric of a suite shares: the reference
features, the params, the networks) and one image set, returning numbers by name. It declares
its columns where it is registered, in one place: the eval.json key and its rounding, the
report's heading and format, which way is better, what it means, and the anchors written
beside it. The suite builds the model's image set and every anchor set (real held-out images,
an untrained generator, the untranslated input) and the registry does the rest: it computes
each metric on the model's set and on every anchor set its columns name, lays the results out
in eval.json and gives the report its table and notes. A new metric is one registration; no
suite, layout or report code changes.

eval.json lists the registered metrics in order. Metrics registered under one `group` are
written together: the values of all their columns, then each column's anchors
(`<key>_<anchor>`), then the group's derived numbers (a ratio to the floor, a gain over the
baseline); `by_column` writes each column's anchors right after it instead.

What people compare between experiments is small: the columns declared `compared` and every
derived number (a ratio to the floor, a gain over the baseline). `split` puts those in
metrics/eval.json, the file DVC shows as metrics (`dvc exp show`, `dvc metrics diff`), and the
rest (anchors, spreads, counts, the feature space, per-class breakdowns) in the descriptive
metrics/eval_details.json beside it. The report reads both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.dataset import to_float

MODEL = "model"  # the raw results of the set under test, beside those of the anchors


@dataclass
class ImageSet:
    """One set of images a metric is measured on: the samples, or an anchor's images."""

    images: Any  # float tensor in [-1, 1], or uint8 array (real images)
    features: Any  # torch.Tensor [N, F] in the FID feature space
    labels: Any = None  # the class of each image (conditional samples, real images)
    cache: dict = field(default_factory=dict)

    def pixels(self) -> torch.Tensor:
        """The images as float32 in [-1, 1], whether they are stored as uint8 or already as floats."""
        if isinstance(self.images, np.ndarray) and self.images.dtype == np.uint8:
            return to_float(self.images)
        return torch.as_tensor(self.images).float()


@dataclass(frozen=True)
class Column:
    """One number (or list, or per-class dict) in eval.json and, unless `in_table` is false, a
    column (or row) of the report's table."""

    key: str  # in eval.json; an anchor's value is written as f"{key}_{anchor}"
    description: str  # what it measures, for the reader
    better: str = "lower"  # "higher" | "lower" | "" (neither: a spread, a count, a name)
    fmt: str = ".3f"  # how the report prints it
    digits: int = 4  # its rounding in eval.json (each float of a list or dict too)
    anchors: tuple[str, ...] = ()  # the anchor sets it is also measured on, in eval.json order
    source: str = ""  # the name the metric function returns it under, when not `key`
    label: str = ""  # the report's heading; by default the key, with spaces
    in_table: bool = True  # in the report's table (the others can have a note)
    ideal: str = "–"  # the table's cell for an anchor it is not measured on
    compared: bool = False  # a DVC metric (metrics/eval.json): what experiments are compared by

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower", ""):
            raise ValueError(f"column {self.key}: better must be 'higher', 'lower' or '', got {self.better!r}")

    @property
    def returned(self) -> str:
        return self.source or self.key

    @property
    def heading(self) -> str:
        return self.label or self.key.replace("_", " ")

    def cell(self, m: Mapping[str, Any], anchor: str = "", mark: str = "") -> str:
        """The report's text for the model's value (`anchor` ""), or an anchor's, between `mark`s
        ("**": bold); `ideal` when it is not in `m`."""
        key = f"{self.key}_{anchor}" if anchor else self.key
        return f"{mark}{format(m[key], self.fmt)}{mark}" if key in m else self.ideal


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[[Any, Any], dict[str, Any]]  # (run, image set) -> {column.returned: value}
    columns: tuple[Column, ...]
    group: str
    by_column: bool = False
    when: Callable[[Any], bool] | None = None  # does it apply to this run (data with classes, paired data)?
    derived: tuple[tuple[str, Callable[[dict[str, dict]], Any]], ...] = ()  # key, f(raw results by set)
    note: Callable[[Mapping[str, Any]], list[str]] | None = None  # report lines after the table

    @property
    def anchors(self) -> list[str]:
        return list(dict.fromkeys(a for c in self.columns for a in c.anchors))


def rounded(value: Any, digits: int) -> Any:
    """`value` rounded to `digits`: a float, each float of a list or tuple (as a list) or of a dict."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return value


# What every suite's numbers were measured with (its `setup` metric lists them after its own counts):
# the protocol, which published FIDs differ by as much as by their models (resize filter, sample counts).
FEATURE_SPACE = (
    Column("resolution", "image side in pixels", better="", in_table=False),
    Column("feature_extractor", "the feature space", better="", in_table=False),
    Column("extractor_sha256", "SHA-256 of the feature network's weights", better="", in_table=False),
    Column("feature_dim", "dimensions of the features FID's covariances are taken of", better="", in_table=False),
    Column("resize", "how images reach the extractor's input size", better="", in_table=False),
)


def few_images_warning(m: Mapping[str, Any], count: int) -> list[str]:
    """The report's warning when FID compares sets of `count` images, fewer than the features' dimensions
    (m["feature_dim"]): the covariances are then singular and FID is biased upwards, by more the fewer the
    images, so it compares only with runs of the same count. Nothing otherwise."""
    dim = m.get("feature_dim")
    if dim is None or count >= dim:
        return []
    return ["", f"**FID from fewer images than feature dimensions** ({count} per set, {dim}-d features): "
            "the covariances are singular and FID is biased upwards; compare it only with runs of the "
            "same count (evaluate.num_samples), not with published numbers (those use 50,000 samples)."]  # fmt: skip


def feature_space(extractor: Any, resolution: int, of: str = "") -> dict[str, Any]:
    """FEATURE_SPACE's values for `extractor` on images of side `resolution` (`of`: whose features)."""
    return {
        "resolution": int(resolution),
        "feature_extractor": extractor.description + (f", {of}" if of else ""),
        "extractor_sha256": extractor.identity["extractor_sha256"],
        "feature_dim": extractor.dim,
        "resize": extractor.resize,
    }


@dataclass
class Registry:
    """The metrics of one suite (generation, translation), in the order eval.json lists them."""

    metrics: dict[str, Metric] = field(default_factory=dict)

    def register(
        self,
        *columns: Column,
        group: str = "",
        by_column: bool = False,
        when: Callable[[Any], bool] | None = None,
        derived: Mapping[str, Callable[[dict[str, dict]], Any]] | None = None,
        note: Callable[[Mapping[str, Any]], list[str]] | None = None,
    ) -> Callable:
        """Decorator: register `fn(run, image_set) -> {name: value}` under its function name,
        writing `columns` (see the module's docstring for `group`, `by_column` and `derived`).
        Registering a name again replaces that metric in its place."""
        if not columns:
            raise ValueError("a metric declares at least one column")

        def add(fn: Callable[[Any, Any], dict[str, Any]]) -> Callable[[Any, Any], dict[str, Any]]:
            self.metrics[fn.__name__] = Metric(fn.__name__, fn, tuple(columns), group or fn.__name__, by_column, when,
                                               tuple((derived or {}).items()), note)  # fmt: skip
            return fn

        return add

    def remove(self, name: str) -> None:
        del self.metrics[name]

    def active(self, run: Any) -> list[Metric]:
        return [m for m in self.metrics.values() if m.when is None or m.when(run)]

    def anchors(self, run: Any) -> list[str]:
        """The anchor sets the metrics that apply to `run` are measured on."""
        return list(dict.fromkeys(a for m in self.active(run) for a in m.anchors))

    def measure(self, run: Any, sets: Mapping[str, Any]) -> dict[str, Any]:
        """Every metric that applies to `run` on the model's set (`sets[MODEL]`) and on each
        anchor set its columns name, laid out as eval.json lists them."""
        out: dict[str, Any] = {}
        groups: dict[str, list[tuple[Metric, dict[str, dict]]]] = {}
        for metric in self.active(run):
            raw = {name: metric.compute(run, sets[name]) for name in (MODEL, *metric.anchors)}
            groups.setdefault(metric.group, []).append((metric, raw))
        for members in groups.values():
            cols = [(c, raw) for metric, raw in members for c in metric.columns]
            for c, raw in cols:
                out[c.key] = rounded(raw[MODEL][c.returned], c.digits)
                if members[0][0].by_column:
                    out |= _anchored(c, raw)
            if not members[0][0].by_column:
                for c, raw in cols:
                    out |= _anchored(c, raw)
            for metric, raw in members:
                out |= {key: f(raw) for key, f in metric.derived}
        return out

    def compared(self) -> list[str]:
        """The keys of metrics/eval.json: the compared columns and the derived numbers, in eval.json order."""
        keys: list[str] = []
        for metric in self.metrics.values():
            keys += [c.key for c in metric.columns if c.compared] + [key for key, _ in metric.derived]
        return keys

    def split(self, m: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """`m` as the two files it is written to: what experiments are compared by (metrics/eval.json,
        a DVC metric) and everything else, in `m`'s order (metrics/eval_details.json)."""
        keys = set(self.compared())
        return {k: v for k, v in m.items() if k in keys}, {k: v for k, v in m.items() if k not in keys}

    def table_columns(self, m: Mapping[str, Any]) -> list[Column]:
        """The report table's columns present in the metrics `m`, in registration order."""
        return [c for metric in self.metrics.values() for c in metric.columns if c.in_table and c.key in m]

    def notes(self, m: Mapping[str, Any]) -> list[str]:
        """The report's lines below the table: each metric's note, for those present in `m`."""
        lines: list[str] = []
        for metric in self.metrics.values():
            if metric.note is not None and metric.columns[0].key in m:
                lines += metric.note(m)
        return lines


def _anchored(c: Column, raw: dict[str, dict]) -> dict[str, Any]:
    return {f"{c.key}_{a}": rounded(raw[a][c.returned], c.digits) for a in c.anchors}
