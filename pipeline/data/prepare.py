"""`prepare` stage: any source -> one uniform prepared dataset.

Output layout (a contract, see docs/architecture.md), all under `data/prepared/`:
  one domain (image generation):
    {train,val}_images.npy  uint8 [N, C, H, W]   (memory-mappable)
    {train,val}_labels.npy  int64 [N]            (index into manifest "classes")
  two domains (style transfer; glyphs, unpaired or paired folders):
    {train,val}_A.npy, {train,val}_B.npy  uint8 [N, C, H, W]; paired: row i of A matches row i of B
  manifest.json   source, classes or domains, every source file with sha256, label, split
  stats.json      counts per class (or domain) and split, pixel mean/std, original sizes seen
The train/val split is decided by each item's content hash (glyphs: by the character), so
adding images never moves existing ones between splits.

Files are decoded in worker processes (`decode`) and streamed to disk (`arrays`): memory stays
flat whatever the dataset size. The four outputs (data/prepared/, the JSON report, its Markdown
summary and the summary's per-class thumbnails) are built as temporaries and renamed into place
together once all four are complete; `temporaries` locks them while in use and removes those a
killed run left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import atomic_path, write_json
from pipeline.config import DataConfig
from pipeline.data import sources
from pipeline.data.arrays import ArrayWriter
from pipeline.data.decode import Outcome, decoded, max_file_bytes
from pipeline.data.report import (
    class_thumbnails,
    data_report,
    one_line,
    report_json,
    summary_markdown,
    summary_path,
    thumbs_path,
    warnings_note,
)
from pipeline.data.sources import Source, SourceError, safe_text, split_of
from pipeline.data.temporaries import claim, create_file, remove_stale_temporaries
from pipeline.errors import UserError
from pipeline.grid import figure_png

log = logging.getLogger(__name__)

BUFFERED_UNITS = 256  # items held back before streaming to disk, so tiny datasets can still get a val item
SPLITS = ("train", "val")


class DataError(UserError, ValueError):
    """The dataset as a whole cannot be prepared; the message lists every offending file."""

    def __init__(self, message: str):
        # Prefect sends the message to its API as UTF-8 JSON: a lone surrogate (an undecodable
        # byte of a file name) would break its state handling instead of reporting the error.
        super().__init__(safe_text(str(message)))


@dataclass
class PrepareResult:
    out_dir: Path
    counts: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)


def prepare(cfg: DataConfig, out_dir: Path | str, report_path: Path | str) -> PrepareResult:
    """Decode, validate, resize and split a source; write the prepared dataset atomically.

    With `on_error: fail` any bad file (or an empty class) aborts with a DataError naming
    each one and nothing is written; with `skip` they are left out and listed in the report
    (`reports/data_report.json`, a readable `.md` and its `_thumbs.png` beside it). Exact
    duplicates are never an error: the first (by name) is kept, the others listed. The dataset
    and the reports are complete before any of them replaces its previous version.
    """
    started = time.time()
    out_dir, report_path = Path(out_dir), Path(report_path)
    outputs = (out_dir, report_path, summary_path(report_path), thumbs_path(report_path))
    remove_stale_temporaries(outputs, started)
    try:
        source = source_for(cfg)
    except SourceError as err:
        raise DataError(str(err)) from None
    # `with locks, staged`: the temporaries are renamed into place (last entered, first)
    # before their locks are released
    with contextlib.ExitStack() as locks, contextlib.ExitStack() as staged:
        tmp, tmp_report, tmp_summary, tmp_thumbs = (staged.enter_context(atomic_path(p)) for p in outputs)
        claim(locks, tmp, tmp.mkdir)
        col = _collect(cfg, source, tmp)
        classes, empty = _classes(cfg, source, col)
        counts = _write_dataset(cfg, source, col, classes, tmp)
        notes = {**source.notes, **warnings_note(cfg, counts, col.coloured, len(col.files), bool(source.domains))}
        report = data_report(cfg, notes, counts, col.skipped, empty, seen=col.files_seen, used=len(col.files))
        for warning in notes.get("warnings", []):
            log.warning(warning)
        thumbs = figure_png(class_thumbnails(tmp, classes, bool(source.domains)))
        summary = summary_markdown(report, outputs[3].name)
        for path, content in ((tmp_report, report_json(report).encode()), (tmp_summary, summary.encode()),
                              (tmp_thumbs, thumbs)):  # fmt: skip
            claim(locks, path, lambda p=path: create_file(p))
            path.write_bytes(content)
    return PrepareResult(out_dir=out_dir, counts=counts, skipped=col.skipped)


def source_for(cfg: DataConfig) -> Source:
    if cfg.source == "digits":
        return sources.digits_source()
    if cfg.source == "idx":
        return sources.idx_source(cfg.path or "", cfg.class_names)
    if cfg.source == "stacked":
        from pipeline.data.stacked import stacked_source

        return stacked_source(cfg.stacked.count, cfg.val_fraction)
    if cfg.source == "torchvision":
        from pipeline.data.torchvision_source import torchvision_source

        return torchvision_source(cfg.dataset or "", cfg.path or "", cfg.torchvision_splits, cfg.class_names)
    if cfg.source == "glyphs":
        from pipeline.data.glyphs import glyph_source

        g = cfg.glyphs
        return glyph_source(g.font_a, g.font_b, g.chars, cfg.image_size, g.scale)
    if cfg.source == "emoji":
        from pipeline.data.emoji import emoji_source

        e = cfg.emoji
        return emoji_source(e.font, list(e.blocks), e.background)
    if cfg.layout == "unpaired":
        return sources.unpaired_source(cfg.path or "", max_file_bytes(cfg))
    if cfg.layout == "paired":
        return sources.paired_source(cfg.path or "", max_file_bytes(cfg))
    return sources.folder_source(cfg.path or "", max_file_bytes(cfg))


def _collect(cfg: DataConfig, source: Source, tmp: Path) -> _Collector:
    """Decode every record (folder sources: in worker processes) and write what is usable into `tmp`."""
    workers = (cfg.workers or os.cpu_count() or 1) if cfg.source == "folder" else 1
    collector = _Collector(cfg, source, tmp)
    try:
        stream = decoded(source.records, cfg, workers)
        for outcome in tqdm(stream, total=source.total, desc="prepare", unit="file", dynamic_ncols=True):
            collector.add(outcome)
    except SourceError as err:
        raise DataError(str(err)) from None
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as err:  # a corrupt archive stream
        raise DataError(f"data.path {cfg.path!r}: cannot be read to the end ({err})") from None
    collector.finish()
    return collector


@dataclass
class _Unit:
    """What goes into the dataset together: one image, or an A/B pair."""

    outcomes: list[Outcome]
    split: str


class _Collector:
    """Turns the stream of outcomes into units: validates pairs, deduplicates, assigns splits
    and writes them, keeping the manifest entries and the files left out (with why)."""

    def __init__(self, cfg: DataConfig, source: Source, tmp: Path):
        self.cfg, self.source, self.tmp = cfg, source, tmp
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self.files_seen = 0
        self.coloured = 0  # colour images made grey (data.channels: 1)
        self.files: list[dict] = []
        self.skipped: list[dict[str, str]] = []
        self.labels: dict[str, list[str]] = {"train": [], "val": []}
        self.sizes: Counter[str] = Counter()
        self.arrays: dict[str, ArrayWriter] = {}
        self.seen_pixels: dict[str, str] = {}
        self.buffer: list[_Unit] | None = []
        self.pending_pair: Outcome | None = None

    def add(self, o: Outcome) -> None:
        self.files_seen += 1
        if self.source.paired and o.record.pair is not None:
            if o.record.label == "A":
                self.pending_pair = o
                return
            a, self.pending_pair = self.pending_pair, None
            assert a is not None and a.record.pair == o.record.pair, "paired sources yield A then B"
            bad = [x for x in (a, o) if x.reason]
            for x in bad:
                self._skip(x, x.reason or "", "bad")
            for x in (a, o):
                if bad and not x.reason:
                    self._skip(x, f"its pair partner {bad[0].record.name} is unusable", "partner")
            if not bad:
                self._unit([a, o])
            return
        if o.reason:
            self._skip(o, o.reason, "bad")
            return
        self._unit([o])

    def finish(self) -> None:
        if self.buffer is not None:
            self._flush()

    def _skip(self, outcome: Outcome, reason: str, kind: str) -> None:
        self.skipped.append({"file": outcome.record.name, "reason": reason, "kind": kind})

    def _unit(self, outcomes: list[Outcome]) -> None:
        domain = outcomes[0].record.label if self.source.domains and not self.source.paired else ""
        pixkey = domain + "".join(o.pixhash for o in outcomes)
        first = self.seen_pixels.setdefault(pixkey, outcomes[0].record.name)
        if first != outcomes[0].record.name:
            for o in outcomes:
                self._skip(o, f"exact duplicate of {first} (same decoded pixels); the first is kept", "duplicate")
            return
        self.coloured += sum(o.coloured for o in outcomes)
        rec = outcomes[0].record
        if rec.split_key:
            basis = hashlib.sha256(rec.split_key.encode()).hexdigest()
        elif len(outcomes) > 1:
            basis = hashlib.sha256("".join(o.sha256 for o in outcomes).encode()).hexdigest()
        else:
            basis = outcomes[0].sha256
        split = rec.split or split_of(basis, self.cfg.val_fraction)
        unit = _Unit(outcomes, split)
        if self.buffer is not None:
            self.buffer.append(unit)
            if len(self.buffer) >= BUFFERED_UNITS:
                self._flush()
        else:
            self._write(unit)

    def _flush(self) -> None:
        buffer, self.buffer = self.buffer or [], None
        self._ensure_both_splits(buffer)
        for unit in buffer:
            self._write(unit)

    def _ensure_both_splits(self, units: list[_Unit]) -> None:
        """Tiny datasets may hash every item into one split: move the item with the smallest
        hash into the empty split (per domain for unpaired data). Layout-fixed splits stay."""
        groups: dict[str, list[_Unit]] = {}
        for u in units:
            groups.setdefault(u.outcomes[0].record.label if self.source.domains else "", []).append(u)
        for members in groups.values():
            free = [u for u in members if not u.outcomes[0].record.split]
            for empty in ("val", "train"):
                if free and all(u.split != empty for u in members) and len(members) >= 2:
                    min(free, key=lambda u: "".join(o.sha256 for o in u.outcomes)).split = empty

    def _write(self, unit: _Unit) -> None:
        for o in unit.outcomes:
            rec = o.record
            name = f"{unit.split}_{rec.label}" if self.source.domains else f"{unit.split}_images"
            if name not in self.arrays:
                self.arrays[name] = ArrayWriter(self.tmp / f"{name}.npy", self.shape)
            self.arrays[name].add(o.image)
            if not self.source.domains:
                self.labels[unit.split].append(rec.label)
            self.sizes[f"{o.size[0]}x{o.size[1]}"] += 1
            entry = {"name": rec.name, "sha256": o.sha256, "label": rec.label, "split": unit.split}
            if rec.pair is not None:
                entry["pair"] = rec.pair
            if rec.channel_labels is not None:
                entry["channel_labels"] = list(rec.channel_labels)
            self.files.append(entry)
            o.image = None  # written: let it go


def _classes(cfg: DataConfig, source: Source, col: _Collector) -> tuple[list[str], list[str]]:
    """The classes (two domains: the domains) and the declared classes left empty, or a DataError."""
    used_labels = {f["label"] for f in col.files}
    declared = [] if source.domains else cfg.class_names or source.declared_classes
    empty = [c for c in declared if c not in used_labels]
    _fail_if_needed(cfg, col, empty)
    if source.domains:
        for split, d in product(SPLITS, source.domains):
            if f"{split}_{d}" not in col.arrays:
                hint = "raise data.val_fraction or add images" if split == "val" else "add images"
                raise DataError(f"no usable {split} images in domain {d} ({hint})")
        if source.paired:
            assert all(col.arrays[f"{s}_A"].n == col.arrays[f"{s}_B"].n for s in SPLITS)
        return list(source.domains), empty
    if not col.files:
        raise DataError(f"no usable images in data source {cfg.source!r} {one_line(cfg.path or '')}".rstrip())
    if len(col.files) < 2:
        raise DataError("need at least 2 usable images for a train/val split")
    for split in SPLITS:
        if f"{split}_images" not in col.arrays:
            raise DataError(f"the {split} split is empty: raise data.val_fraction or add images")
    order = cfg.class_names or (source.declared_classes if source.ordered_classes else _class_order(used_labels))
    return [c for c in order if c in used_labels] + [c for c in _class_order(used_labels) if c not in order], empty


def _fail_if_needed(cfg: DataConfig, col: _Collector, empty: list[str]) -> None:
    bad = [s for s in col.skipped if s["kind"] == "bad"]
    if cfg.on_error != "fail" or not (bad or empty):
        return
    lines = [f"  {one_line(s['file'])}: {one_line(s['reason'])}" for s in bad]
    lines += [f"  {one_line(c)}/: class folder has no usable images" for c in empty]
    raise DataError(
        f"{len(bad)} of {col.files_seen} input files are unusable"
        + (f" and {len(empty)} class(es) are empty" if empty else "")
        + " (data.on_error=fail; set it to 'skip' to leave them out):\n"
        + "\n".join(lines)
    )


def _class_order(names: Iterable[str]) -> list[str]:
    """Numeric class names in numeric order, then the others by name. Only ASCII digits make
    a number ('²'.isdigit() is true, but int() refuses it); the name itself breaks ties
    ('7', '07'), so the order never depends on the order of a set."""
    return sorted(set(names), key=lambda s: (0, int(s), s) if s.isascii() and s.isdigit() else (1, 0, s))


def _write_dataset(cfg: DataConfig, source: Source, col: _Collector, classes: list[str], tmp: Path) -> dict[str, int]:
    """Complete the prepared folder `tmp` (labels, arrays, manifest, stats); returns the images per array."""
    if not source.domains:
        index = {c: i for i, c in enumerate(classes)}
        for split in SPLITS:
            np.save(tmp / f"{split}_labels.npy", np.array([index[x] for x in col.labels[split]], dtype=np.int64))
    stats = _stats(source, col, classes)
    for w in col.arrays.values():
        w.finish()
    manifest = {"source": cfg.source, "path": cfg.path, "image_size": cfg.image_size, "channels": cfg.channels}
    if cfg.source == "torchvision":  # which torchvision class, and its own splits (the files' names start with one)
        manifest |= {"dataset": cfg.dataset, "splits": list(cfg.torchvision_splits)}
    if source.channel_classes:  # each file's channel_labels index these (pipeline.dataset.channel_labels)
        manifest["channel_classes"] = source.channel_classes
    manifest |= {"classes": classes, "files": col.files}
    if source.domains:
        manifest |= {"domains": list(source.domains), "paired": source.paired}
    write_json(tmp / "manifest.json", manifest)
    write_json(tmp / "stats.json", stats)
    if source.domains:
        return {f"{s}_{d}": col.arrays[f"{s}_{d}"].n for s in SPLITS for d in source.domains}
    return {s: col.arrays[f"{s}_images"].n for s in SPLITS}


def _stats(source: Source, col: _Collector, classes: list[str]) -> dict:
    if source.domains:
        stats: dict = {"domains": list(source.domains), "paired": source.paired, "splits": {}}
        for split in SPLITS:
            arrays = {d: col.arrays[f"{split}_{d}"] for d in source.domains}
            stats["splits"][split] = {d: {"count": w.n, **w.stats()} for d, w in arrays.items()}
    else:
        stats = {"num_classes": len(classes), "classes": classes, "splits": {}}
        for split in SPLITS:
            w = col.arrays[f"{split}_images"]
            per_class = {c: col.labels[split].count(c) for c in classes}
            stats["splits"][split] = {"count": w.n, "per_class": per_class, **w.stats()}
    stats["original_sizes"] = dict(col.sizes)
    return stats
