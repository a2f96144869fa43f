"""`prepare` stage: any source -> one uniform prepared dataset.

Output layout (a contract, see DESIGN.md), all under `data/prepared/`:
  one domain (image generation):
    {train,val}_images.npy  uint8 [N, C, H, W]   (memory-mappable)
    {train,val}_labels.npy  int64 [N]            (index into manifest "classes")
  two domains (style transfer; glyphs, unpaired or paired folders):
    {train,val}_A.npy, {train,val}_B.npy  uint8 [N, C, H, W]; paired: row i of A matches row i of B
  manifest.json   source, classes or domains, every source file with sha256, label, split
  stats.json      counts per class (or domain) and split, pixel mean/std, original sizes seen
The train/val split is decided by each item's content hash (glyphs: by the character), so
adding images never moves existing ones between splits.

Ingestion streams: files are read and decoded in worker processes a few batches at a
time, decoded pixels are appended to raw files on disk, and the .npy outputs are
assembled from those at the end, so memory stays flat whatever the dataset size. No file
or archive member is read beyond what an image within data.max_pixels can need
(`max_file_bytes`), so an archive bomb cannot fill memory either.

The three outputs (data/prepared/, the JSON report, its Markdown summary) are built as
temporaries and renamed into place together once all three are complete. A run that is
killed leaves its temporaries behind; the next run removes those whose owner is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import stat
import tarfile
import time
import warnings
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from pipeline.artifacts import atomic_path, write_json
from pipeline.config import DataConfig
from pipeline.data.sources import (
    Record,
    Source,
    SourceError,
    digits_source,
    folder_source,
    idx_source,
    paired_source,
    safe_text,
    too_large,
    unpaired_source,
)
from pipeline.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so a live temporary cannot be told from a stale one
    fcntl = None  # type: ignore[assignment]

# Modes with a documented conversion rule (see `_to_mode`); anything else is refused.
# LAB is refused: Pillow converts it to RGB by copying channels, not by colour management.
SUPPORTED_MODES = {"1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "RGBa", "CMYK", "YCbCr", "HSV"}
SUPPORTED_MODES |= {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
BUFFERED_UNITS = 256  # items held back before streaming to disk, so tiny datasets can still get a val item
BATCH = 32  # records per worker task
# The most bytes per pixel an image file can need: 16-bit RGBA/CMYK (PNG, TIFF) and 64-bit
# float greyscale (TIFF) take 8; plus room for metadata (ICC profiles, EXIF, XMP, thumbnails).
FILE_BYTES_PER_PIXEL = 8
FILE_METADATA_BYTES = 16 << 20


class BadImage(UserError, ValueError):
    """One input file cannot be used; the message says why."""

    def __init__(self, message: str):
        super().__init__(safe_text(str(message)))


class DataError(UserError, ValueError):
    """The dataset as a whole cannot be prepared; the message lists every offending file."""

    def __init__(self, message: str):
        # Prefect sends the message to its API as UTF-8 JSON: a lone surrogate (an undecodable
        # byte of a file name) would break its state handling instead of reporting the error.
        super().__init__(safe_text(str(message)))


def max_file_bytes(cfg: DataConfig) -> int:
    """The largest file or archive member worth reading: what the largest image allowed by
    data.max_pixels can take, with generous room. Anything bigger is refused unread."""
    return FILE_BYTES_PER_PIXEL * cfg.max_pixels + FILE_METADATA_BYTES


@dataclass
class PrepareResult:
    out_dir: Path
    counts: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)


def source_for(cfg: DataConfig) -> Source:
    if cfg.source == "digits":
        return digits_source()
    if cfg.source == "idx":
        return idx_source(cfg.path or "", cfg.class_names)
    if cfg.source == "glyphs":
        from pipeline.data.glyphs import glyph_source

        g = cfg.glyphs
        return glyph_source(g.font_a, g.font_b, g.chars, cfg.image_size, g.scale)
    if cfg.layout == "unpaired":
        return unpaired_source(cfg.path or "", max_file_bytes(cfg))
    if cfg.layout == "paired":
        return paired_source(cfg.path or "", max_file_bytes(cfg))
    return folder_source(cfg.path or "", max_file_bytes(cfg))


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Documented conversion rules (modes outside SUPPORTED_MODES are refused): EXIF
    orientation applied; 16-bit and 32-bit integer scaled to 8-bit by their range; float
    taken as [0, 1] if its maximum is <= 1, else [0, 255]; palette expanded; alpha
    composited onto black; CMYK, YCbCr, HSV and 1-bit converted by Pillow; then L
    (1 channel, ITU-R 601 luma) or RGB."""
    if img.mode not in SUPPORTED_MODES:
        hint = " (no colour-managed conversion to RGB; convert it to sRGB first)" if img.mode == "LAB" else ""
        raise BadImage(f"unsupported image mode {img.mode!r}{hint}")
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 255.0 if arr.max(initial=0) <= 255 else 65535.0 if arr.max() <= 65535 else float(arr.max())
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "RGBA", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, 1
    return img.convert("L" if channels == 1 else "RGB")


def _square_resize(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    if w != h:  # centre crop to a square first so objects keep their aspect ratio
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.LANCZOS if side > size else Image.BICUBIC)
    return img


_ZIPS: dict[str, zipfile.ZipFile] = {}  # per process: archives stay open across records


def read_content(record: Record, max_bytes: int | None = None) -> bytes:
    """The record's content; more than `max_bytes` is refused before it is read (a size that
    is known) or as soon as it is (a file that grows while being read)."""
    limit = max_bytes if max_bytes is not None else 1 << 62  # no limit
    if record.data is not None:
        return record.data
    if record.path is not None:
        try:
            with open(record.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > limit:
                    raise BadImage(too_large(size, limit))
                data = fh.read(size + 1)  # one byte more: to notice a file that grew since fstat
                if len(data) > size:
                    data += fh.read(-1 if max_bytes is None else limit + 1 - len(data))
        except PermissionError:
            raise BadImage("unreadable (permission denied)") from None
        except OSError as err:
            raise BadImage(f"unreadable ({err.strerror or err})") from None
        if len(data) > limit:
            raise BadImage(too_large(len(data), limit))
        return data
    if record.member is not None:
        archive, name = record.member
        zf = _ZIPS.get(archive) or _ZIPS.setdefault(archive, zipfile.ZipFile(archive))
        try:
            info = zf.getinfo(name)
            if info.file_size > limit:
                raise BadImage(too_large(info.file_size, limit))
            # zipfile stops at the declared size (and then fails the CRC of a member that is
            # longer); asking for no more than that also caps each step of the decompression
            with zf.open(info) as fh:
                data = fh.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as err:
            # RuntimeError: encrypted; NotImplementedError: an unsupported compression method
            raise BadImage(f"cannot be extracted from {archive} ({err})") from None
        if len(data) > limit:
            raise BadImage(too_large(len(data), limit))
        return data
    if record.array is not None:
        return record.array.tobytes()
    raise BadImage("no content")


def decode(record: Record, cfg: DataConfig) -> tuple[np.ndarray, tuple[int, int], str, str]:
    """Fully decode one record: uint8 [C, size, size], original (w, h), content sha256 and
    the sha256 of its decoded pixels (what duplicate detection compares)."""
    if record.problem:
        raise BadImage(record.problem)
    raw = read_content(record, max_file_bytes(cfg))
    sha = hashlib.sha256(raw).hexdigest()
    if record.array is not None:
        img = Image.fromarray(record.array)  # array sources: known sizes, no minimum-size rule
    else:
        if not raw:
            raise BadImage("empty file (0 bytes)")
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(raw))
                img.load()  # decode every byte now, so truncation is caught here (first frame of animations)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage(f"more than data.max_pixels={cfg.max_pixels} pixels (decompression-bomb guard)") from None
        except UnidentifiedImageError:
            raise BadImage("not an image (no decoder recognises its content)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise BadImage(f"cannot be decoded ({err})") from None
        if min(img.size) < cfg.smallest_side:
            raise BadImage(
                f"{img.size[0]}x{img.size[1]} is smaller than data.min_size={cfg.smallest_side} px "
                f"(default: half of data.image_size)"
            )
    original = img.size
    img = _to_mode(img, cfg.channels)
    full = np.asarray(img, dtype=np.uint8)
    pixhash = hashlib.sha256(f"{full.shape}".encode() + full.tobytes()).hexdigest()
    arr = np.asarray(_square_resize(img, cfg.image_size), dtype=np.uint8)
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy(), original, sha, pixhash


@dataclass
class Outcome:
    record: Record
    image: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    sha256: str = ""
    pixhash: str = ""
    reason: str | None = None


def _outcome(record: Record, cfg: DataConfig) -> Outcome:
    try:
        image, size, sha, pixhash = decode(record, cfg)
    except BadImage as err:
        return Outcome(record, reason=str(err))
    # the decoder already read the content: don't ship it back from a worker
    slim = Record(**{**record.__dict__, "data": None, "array": None})
    return Outcome(slim, image, size, sha, pixhash)


_WORKER_CFG: DataConfig | None = None


def _init_worker(cfg: DataConfig) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg
    os.environ["OMP_NUM_THREADS"] = "1"


def _decode_batch(records: list[Record]) -> list[Outcome]:
    assert _WORKER_CFG is not None
    return [_outcome(r, _WORKER_CFG) for r in records]


def decoded(records: Iterator[Record], cfg: DataConfig, workers: int) -> Iterator[Outcome]:
    """Outcomes in record order. With workers > 1, decoding runs in that many processes with
    a bounded number of batches in flight (memory stays flat, the order is kept)."""
    if workers <= 1:
        for r in records:
            yield _outcome(r, cfg)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg,)) as pool:
        pending: deque[Future] = deque()
        it = iter(records)
        while True:
            while len(pending) < workers * 4 and (batch := list(islice(it, BATCH))):
                pending.append(pool.submit(_decode_batch, batch))
            if not pending:
                return
            yield from pending.popleft().result()


def split_of(sha256: str, val_fraction: float) -> str:
    """Deterministic split from the content hash: stable when the dataset grows."""
    return "val" if int(sha256[:8], 16) / 16**8 < val_fraction else "train"


def _class_order(names: Iterable[str]) -> list[str]:
    """Numeric class names in numeric order, then the others by name. Only ASCII digits make
    a number ('²'.isdigit() is true, but int() refuses it); the name itself breaks ties
    ('7', '07'), so the order never depends on the order of a set."""
    return sorted(set(names), key=lambda s: (0, int(s), s) if s.isascii() and s.isdigit() else (1, 0, s))


class _ArrayWriter:
    """Appends [C, H, W] uint8 images to a raw file and keeps running pixel sums; `finish`
    turns the raw file into an .npy file (header + the same bytes) without loading it."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path, self.shape, self.n = path, shape, 0
        self.fh = open(path.with_suffix(".raw"), "wb")  # noqa: SIM115 (closed in finish)
        self.sum = np.zeros(shape[0])
        self.sumsq = np.zeros(shape[0])

    def add(self, image: np.ndarray) -> None:
        self.fh.write(image.tobytes())
        pix = image.reshape(self.shape[0], -1).astype(np.float64) / 255.0
        self.sum += pix.sum(axis=1)
        self.sumsq += (pix * pix).sum(axis=1)
        self.n += 1

    def stats(self) -> dict:
        count = max(1, self.n * self.shape[1] * self.shape[2])
        mean = self.sum / count
        std = np.sqrt(np.maximum(self.sumsq / count - mean * mean, 0.0))
        return {"pixel_mean": mean.round(6).tolist(), "pixel_std": std.round(6).tolist()}

    def finish(self) -> None:
        self.fh.close()
        raw = self.path.with_suffix(".raw")
        with open(self.path, "wb") as out, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(
                out, {"descr": "|u1", "fortran_order": False, "shape": (self.n, *self.shape)}
            )
            shutil.copyfileobj(src, out, 16 << 20)
        raw.unlink()


@dataclass
class _Unit:
    """What goes into the dataset together: one image, or an A/B pair."""

    outcomes: list[Outcome]
    split: str

    @property
    def key(self) -> str:
        return "".join(o.sha256 for o in self.outcomes)


class _Collector:
    """Turns the stream of outcomes into units: validates, deduplicates, assigns splits and
    writes them; keeps the report."""

    def __init__(self, cfg: DataConfig, source: Source, tmp: Path):
        self.cfg, self.source, self.tmp = cfg, source, tmp
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self.skipped: list[dict[str, str]] = []
        self.sizes: Counter[str] = Counter()
        self.seen_pixels: dict[str, str] = {}
        self.labels_seen: set[str] = set()
        self.files: list[dict] = []
        self.labels: dict[str, list[str]] = {"train": [], "val": []}
        self.writers: dict[str, _ArrayWriter] = {}
        self.buffer: list[_Unit] | None = []
        self.files_seen = 0
        self.pending_pair: Outcome | None = None
        self.classes: list[str] = []
        self.empty_classes: list[str] = []
        self.counts: dict[str, int] = {}

    def _skip(self, outcome: Outcome, reason: str, kind: str) -> None:
        self.skipped.append({"file": outcome.record.name, "reason": reason, "kind": kind})

    def add(self, o: Outcome) -> None:
        self.files_seen += 1
        self.labels_seen.add(o.record.label)
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

    def _unit(self, outcomes: list[Outcome]) -> None:
        domain = outcomes[0].record.label if self.source.domains and not self.source.paired else ""
        pixkey = domain + "".join(o.pixhash for o in outcomes)
        first = self.seen_pixels.setdefault(pixkey, outcomes[0].record.name)
        if first != outcomes[0].record.name:
            for o in outcomes:
                self._skip(o, f"exact duplicate of {first} (same decoded pixels); the first is kept", "duplicate")
            return
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
                    min(free, key=lambda u: u.key).split = empty

    def _writer(self, name: str) -> _ArrayWriter:
        if name not in self.writers:
            self.writers[name] = _ArrayWriter(self.tmp / f"{name}.npy", self.shape)
        return self.writers[name]

    def _write(self, unit: _Unit) -> None:
        for o in unit.outcomes:
            rec = o.record
            target = f"{unit.split}_{rec.label}" if self.source.domains else f"{unit.split}_images"
            self._writer(target).add(o.image)
            if not self.source.domains:
                self.labels[unit.split].append(rec.label)
            self.sizes[f"{o.size[0]}x{o.size[1]}"] += 1
            entry = {"name": rec.name, "sha256": o.sha256, "label": rec.label, "split": unit.split}
            if rec.pair is not None:
                entry["pair"] = rec.pair
            self.files.append(entry)
            o.image = None  # written: let it go

    def finish(self) -> None:
        if self.buffer is not None:
            self._flush()


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


def _summary_markdown(report: dict) -> str:
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


def summary_path(report_path: Path) -> Path:
    return report_path.with_suffix(".md")


def prepare(cfg: DataConfig, out_dir: Path | str, report_path: Path | str) -> PrepareResult:
    """Decode, validate, resize and split a source; write the prepared dataset atomically.

    With `on_error: fail` any bad file (or an empty class) aborts with a DataError naming
    each one and nothing is written; with `skip` they are left out and listed in the report
    (`reports/data_report.json` and a readable `.md` beside it). Exact duplicates are never
    an error: the first (by name) is kept, the others listed. The dataset and both reports
    are complete before any of them replaces its previous version.
    """
    started = time.time()
    out_dir, report_path = Path(out_dir), Path(report_path)
    outputs = (out_dir, report_path, summary_path(report_path))
    remove_stale_temporaries(outputs, started)
    try:
        source = source_for(cfg)
    except SourceError as err:
        raise DataError(str(err)) from None
    file_based = cfg.source == "folder"
    workers = (cfg.workers or os.cpu_count() or 1) if file_based else 1
    # `with locks, staged`: the temporaries are renamed into place (last entered, first)
    # before their locks are released
    with contextlib.ExitStack() as locks, contextlib.ExitStack() as staged:
        tmp, tmp_report, tmp_summary = (staged.enter_context(atomic_path(p)) for p in outputs)
        locks.callback(_release, _claim(tmp, tmp.mkdir))
        col = _Collector(cfg, source, tmp)
        try:
            stream = decoded(source.records, cfg, workers)
            for outcome in tqdm(stream, total=source.total, desc="prepare", unit="file", dynamic_ncols=True):
                col.add(outcome)
        except SourceError as err:
            raise DataError(str(err)) from None
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as err:  # a corrupt archive stream
            raise DataError(f"data.path {cfg.path!r}: cannot be read to the end ({err})") from None
        col.finish()
        _finish(cfg, source, col, tmp)
        report = _report(cfg, source, col)
        for path, content in (
            (tmp_report, (json.dumps(report, indent=2, sort_keys=False) + "\n").encode()),
            (tmp_summary, _summary_markdown(report).encode()),
        ):
            locks.callback(_release, _claim(path, lambda p=path: _create_file(p)))
            path.write_bytes(content)
    return PrepareResult(out_dir=out_dir, counts=report["counts"], skipped=col.skipped)


# --- temporaries: held while in use, removed once stale ------------------------------------


def _temporary_pattern(target: Path) -> re.Pattern[str]:
    """Names `atomic_path` gives its temporaries of `target` (tempfile's 8 random characters)."""
    return re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _claim(path: Path, create: Callable[[], None]) -> int | None:
    """Create a temporary with `create` and hold an exclusive lock on it until the run ends:
    a run killed by SIGKILL loses its locks, which is how the next run tells its leftovers
    from a concurrent run's live temporaries. If a clean-up removed the new temporary
    between its creation and the lock, it is created again."""
    if fcntl is None:
        create()
        return None
    while True:
        create()
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks, where the clean-up cannot lock (so remove) anything either
            return fd
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.lstat(path), os.fstat(fd)):
                return fd
        os.close(fd)


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def remove_stale_temporaries(targets: Iterable[Path], started: float) -> list[Path]:
    """Remove the temporaries that killed runs left beside `targets`: only names of the form
    `atomic_path` gives them, only ones older than this run (`started`), and only if no live
    process holds their lock. Everything else there is left alone. Returns what was removed."""
    if fcntl is None:
        return []
    removed = []
    for target in targets:
        pattern = _temporary_pattern(target)
        try:
            entries = [e for e in os.scandir(target.parent) if pattern.fullmatch(e.name)]
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) or st.st_mtime >= started:
                    continue
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not os.path.samestat(os.lstat(entry.path), os.fstat(fd)):
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:  # locked by its live owner, or already gone
                continue
            finally:
                os.close(fd)
    return removed


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


def _finish(cfg: DataConfig, source: Source, col: _Collector, tmp: Path) -> None:
    used_labels = {f["label"] for f in col.files}
    if source.domains:
        empty: list[str] = []
        _fail_if_needed(cfg, col, empty)
        for split in ("train", "val"):
            for d in source.domains:
                if f"{split}_{d}" not in col.writers:
                    raise DataError(
                        f"no usable {split} images in domain {d} "
                        f"({'raise data.val_fraction or add images' if split == 'val' else 'add images'})"
                    )
        if source.paired:
            assert all(col.writers[f"{s}_A"].n == col.writers[f"{s}_B"].n for s in ("train", "val"))
        col.classes = list(source.domains)
    else:
        declared = cfg.class_names or source.declared_classes
        empty = [c for c in declared if c not in used_labels]
        _fail_if_needed(cfg, col, empty)
        if not col.files:
            raise DataError(f"no usable images in data source {cfg.source!r} {one_line(cfg.path or '')}".rstrip())
        if len(col.files) < 2:
            raise DataError("need at least 2 usable images for a train/val split")
        for split in ("train", "val"):
            if f"{split}_images" not in col.writers:
                raise DataError(f"the {split} split is empty: raise data.val_fraction or add images")
        order = [c for c in (cfg.class_names or _class_order(used_labels)) if c in used_labels]
        col.classes = order
        index = {c: i for i, c in enumerate(order)}
        for split in ("train", "val"):
            np.save(tmp / f"{split}_labels.npy", np.array([index[x] for x in col.labels[split]], dtype=np.int64))
    col.empty_classes = empty
    if source.domains:
        stats: dict = {"domains": list(source.domains), "paired": source.paired, "splits": {}}
        for split in ("train", "val"):
            stats["splits"][split] = {
                d: {"count": col.writers[f"{split}_{d}"].n, **col.writers[f"{split}_{d}"].stats()}
                for d in source.domains
            }
    else:
        stats = {"num_classes": len(col.classes), "classes": col.classes, "splits": {}}
        for split in ("train", "val"):
            w = col.writers[f"{split}_images"]
            stats["splits"][split] = {
                "count": w.n,
                "per_class": {c: col.labels[split].count(c) for c in col.classes},
                **w.stats(),
            }
    stats["original_sizes"] = dict(col.sizes)
    for w in col.writers.values():
        w.finish()
    manifest = {
        "source": cfg.source,
        "path": cfg.path,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "classes": col.classes,
        "files": col.files,
    }
    if source.domains:
        manifest.update(domains=list(source.domains), paired=source.paired)
    write_json(tmp / "manifest.json", manifest)
    write_json(tmp / "stats.json", stats)
    col.counts = (
        {f"{s}_{d}": col.writers[f"{s}_{d}"].n for s in ("train", "val") for d in source.domains}
        if source.domains
        else {s: col.writers[f"{s}_images"].n for s in ("train", "val")}
    )


def _report(cfg: DataConfig, source: Source, col: _Collector) -> dict:
    report = {
        "source": cfg.source,
        "path": cfg.path,
        "layout": cfg.layout,
        "on_error": cfg.on_error,
        "files_seen": col.files_seen,
        "files_used": len(col.files),
        "counts": col.counts,
        "skipped_by_kind": dict(Counter(s["kind"] for s in col.skipped)),
        "empty_classes": col.empty_classes,
        "skipped": col.skipped,
        **source.notes,
    }
    return report
