"""Data sources: each yields records; `prepare` turns any of them into one format.

A record is one source item: a stable name, a class (or domain) name, and where its
content is: a file on disk, a zip member, bytes already read (tar members), or pixels
already decoded (array sources). File contents are read lazily, by the decoder, so a
folder of 100,000 images is never held in memory and can be decoded in parallel.
Sources never resize or validate; that is `prepare`'s job, so every source gets the
same rules. A source that already knows an item is unusable (a symlink escaping the
source, an archive member with an absolute path or '..', an unmatched pair) yields it
with `problem` set, so it is reported like any other bad file.

Names are text that can be written anywhere (reports, error messages, Prefect's API): a file
name whose bytes are not UTF-8 is named with backslash escapes (`bad\\xff.png`), while the
record keeps the real path to read it by.
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import re
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.errors import UserError

UNLABELLED = "unlabelled"
UNPAIRED_DIRS = {"trainA": ("A", "train"), "trainB": ("B", "train"), "testA": ("A", "val"), "testB": ("B", "val")}


@dataclass(frozen=True)
class Record:
    name: str  # stable identifier, e.g. "3/img_001.png" or "digits/0042"
    label: str  # class name; the domain ("A" / "B") in two-domain layouts
    data: bytes | None = None  # raw content already in memory
    array: np.ndarray | None = None  # already-decoded pixels (array sources)
    path: str | None = None  # a file the decoder reads
    member: tuple[str, str] | None = None  # (zip archive, member name) the decoder reads
    problem: str | None = None  # known to be unusable, and why
    split: str | None = None  # fixed by the layout (CycleGAN's testA/testB -> val); else by content hash
    split_key: str | None = None  # hash this instead of the content to choose the split
    pair: str | None = None  # paired layouts: the key matching an A record with its B record
    channel_labels: tuple[int, ...] | None = None  # the class of each channel's content (stacked digits)


@dataclass
class Source:
    """A source's records plus what the source knows about the whole set."""

    records: Iterator[Record]
    total: int | None = None  # for the progress bar, when known without reading everything
    declared_classes: list[str] = field(default_factory=list)  # class folders, empty ones included
    ordered_classes: bool = False  # declared_classes is the dataset's own label order (torchvision's `classes`)
    channel_classes: list[str] = field(default_factory=list)  # what Record.channel_labels index (stacked digits)
    domains: tuple[str, ...] = ()  # ("A", "B") for two-domain layouts
    paired: bool = False
    notes: dict = field(default_factory=dict)  # source-specific facts for the report


class SourceError(UserError, ValueError):
    """The data source itself is unusable (missing path, unknown archive, no images)."""


def split_of(sha256: str, val_fraction: float) -> str:
    """Deterministic split from the content hash: stable when the dataset grows."""
    return "val" if int(sha256[:8], 16) / 16**8 < val_fraction else "train"


def safe_text(text: str) -> str:
    """`text` as valid Unicode. Bytes of a file name that are not UTF-8 reach Python as lone
    surrogates, which no UTF-8 writer accepts (the Markdown report, Prefect's JSON API), so
    each becomes a backslash escape: the name of the file b'bad\\xff.png' reads `bad\\xff.png`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def digits_records() -> Iterator[Record]:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i, (img, target) in enumerate(zip(bunch.images, bunch.target, strict=True)):
        pixels = np.rint(img * (255.0 / 16.0)).astype(np.uint8)  # digits are 0..16 ink levels
        yield Record(name=f"digits/{i:04d}", data=pixels.tobytes(), label=str(int(target)), array=pixels)


def digits_source() -> Source:
    return Source(digits_records(), total=1797, declared_classes=[str(i) for i in range(10)])


IDX_IMAGES = re.compile(r"^(?P<stem>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")
_IDX_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file (the MNIST family's format: magic, big-endian dims, raw bytes), gzipped or not.

    Streamed and read no further than its header says (plus one byte, to detect extra data):
    a small .gz can expand to any size, and decompressing it whole would hold all of it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4 + 4 * ndim)
            if len(head) < 4 + 4 * ndim:
                raise SourceError(f"{path}: too short for an IDX header")
            zero, dtype, dims = struct.unpack(">HBB", head[:4])
            if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
                raise SourceError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s)")
            shape = struct.unpack(f">{ndim}I", head[4:])
            size = math.prod(shape)
            chunks, got = [], 0
            while got <= size and (chunk := fh.read(min(size + 1 - got, 16 << 20))):
                chunks.append(chunk)
                got += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise SourceError(f"{path}: cannot be read ({err})") from None
    if got != size:
        follow = f"{got} bytes follow" if got < size else "more follow"
        raise SourceError(f"{path}: header says {shape} ({size} bytes) but {follow}")
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(shape)


def idx_records(path: Path | str, class_names: list[str] | None = None) -> Iterator[Record]:
    """Every `<stem>-images-idx3-ubyte[.gz]` in a directory with its `<stem>-labels-idx1-ubyte[.gz]`
    (e.g. MNIST, Fashion-MNIST: train and t10k), named `<stem>/<index>`."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"data.path {str(path)!r} is not a directory of IDX files")
    pairs = sorted((m.group("stem"), f, m.group("gz") or "") for f in path.iterdir() if (m := IDX_IMAGES.match(f.name)))
    if not pairs:
        raise SourceError(f"{path}: no *-images-idx3-ubyte[.gz] files")
    for stem, images_file, gz in pairs:
        labels_file = path / f"{stem}-labels-idx1-ubyte{gz}"
        if not labels_file.is_file():
            raise SourceError(f"{images_file}: no matching labels file {labels_file.name}")
        images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
        if len(images) != len(labels):
            raise SourceError(f"{images_file}: {len(images)} images but {len(labels)} labels in {labels_file.name}")
        if class_names is not None and labels.max(initial=0) >= len(class_names):
            raise SourceError(f"{labels_file}: label {int(labels.max())} but data.class_names has {len(class_names)}")
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            name = class_names[lab] if class_names is not None else str(int(lab))
            yield Record(name=f"{stem}/{i:05d}", data=img.tobytes(), label=name, array=img)


def idx_source(path: Path | str, class_names: list[str] | None = None) -> Source:
    records = idx_records(path, class_names)
    return Source(records, declared_classes=list(class_names or []))


def _wanted(rel: PurePosixPath) -> bool:
    # hidden files and macOS resource forks are never data
    return not any(p.startswith(".") or p == "__MACOSX" for p in rel.parts)


def _unsafe_member(name: str) -> str | None:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        return "archive member escapes the archive (absolute path or '..', zip-slip); rejected"
    return None


def _link_problem(f: Path, root: Path) -> str | None:
    """Why a symlink inside the source cannot be used, or None."""
    target = safe_text(os.readlink(f))
    loop = f"symlink loop ({target} never reaches a file); refused"
    try:
        os.stat(f)
    except OSError as err:  # a dangling link is judged by where it points, and reported as unreadable
        if err.errno == errno.ELOOP:
            return loop
    try:
        resolved = f.resolve()
    except (RuntimeError, OSError):  # RuntimeError: Path.resolve's report of a loop before Python 3.13
        return loop
    if not resolved.is_relative_to(root):
        return f"symlink to {target} points outside data.path; refused"
    return None


def _entries(path: Path) -> tuple[list[Record], list[str]]:
    """Every file of a directory or zip as a lazy record named by its relative path, plus the
    top-level folders (so an empty class folder is still seen). Tar archives are read by
    `_tar_records` instead (they cannot be read out of order cheaply)."""
    if path.is_dir():
        root = path.resolve()
        records = []
        tops = sorted(safe_text(p.name) for p in path.iterdir() if p.is_dir() and _wanted(PurePosixPath(p.name)))
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames[:] = sorted(dirnames)
            for fname in sorted(filenames):
                f = Path(dirpath) / fname
                rel = PurePosixPath(f.relative_to(path).as_posix())
                if not _wanted(rel):
                    continue
                problem = None
                if f.is_symlink():
                    problem = _link_problem(f, root)
                if problem is None and f.exists() and not f.is_file():
                    problem = "not a regular file (device, pipe or socket)"
                records.append(Record(name=safe_text(str(rel)), label="", path=str(f), problem=problem))
        return records, tops
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted(zf.infolist(), key=lambda i: i.filename)
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, EOFError, ValueError) as err:
        # a member name flagged as UTF-8 that is not raises UnicodeDecodeError while opening
        raise SourceError(f"data.path {str(path)!r}: its zip directory cannot be read ({err})") from None
    records, tops = [], set()
    # zipfile reads a member by name and a name given twice resolves to its last entry: the other
    # entry's content would never be what is checked, so every entry of a shared name is refused
    shared = Counter(i.filename for i in infos if not i.is_dir())
    for info in infos:
        rel = PurePosixPath(info.filename)
        if info.is_dir():
            if len(rel.parts) == 1 and _wanted(rel):
                tops.add(safe_text(rel.parts[0]))
            continue
        if not _wanted(rel) and not _unsafe_member(info.filename):
            continue
        if len(rel.parts) > 1:
            tops.add(safe_text(rel.parts[0]))
        problem = _unsafe_member(info.filename)
        if problem is None and shared[info.filename] > 1:
            problem = (f"{shared[info.filename]} members of the zip have this name: which one is meant is "
                       "ambiguous (an extractor keeps one of them); rejected")  # fmt: skip
        name = safe_text(info.filename)
        records.append(Record(name=name, label="", member=(str(path), info.filename), problem=problem))
    return records, sorted(tops)


def _tar_records(path: Path, max_bytes: int | None = None) -> Iterator[Record]:
    """Tar members in stream order, their content read here (a compressed stream cannot be
    read out of order). A member larger than `max_bytes` is never read: tar headers cannot
    understate a member's size, and reading it whole would hold it all in memory."""
    with tarfile.open(path) as tf:
        for member in tf:  # streaming order: one pass over a compressed stream
            if member.isdir():
                continue
            problem = _unsafe_member(member.name)
            if not _wanted(PurePosixPath(member.name)) and not problem:
                continue
            problem = problem or _tar_member_problem(member)
            if not problem and max_bytes is not None and member.size > max_bytes:
                problem = too_large(member.size, max_bytes)
            data = None
            if not problem:
                try:  # a link inside the archive reads its target, as a folder's symlink does
                    fh = tf.extractfile(member)
                except KeyError:  # tarfile finds a link's target among the members before it
                    problem = f"link to {safe_text(member.linkname)}: no such file before it in the archive; refused"
                    fh = None
                if fh is not None:
                    data = fh.read(-1 if max_bytes is None else max_bytes + 1)
                    if max_bytes is not None and len(data) > max_bytes:
                        problem, data = too_large(len(data), max_bytes), None
                elif not problem:
                    problem = f"link to {safe_text(member.linkname)}, which is not a file; refused"
            yield Record(name=safe_text(member.name), label="", data=data, problem=problem)


_TAR_DEST = "/nonexistent/ganpipe-data"  # data_filter judges links against a destination; nothing is extracted


def _tar_member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member that is not a plain file cannot be used (None: a link inside the archive),
    judged by the standard library's extraction filter and worded as a folder source words it."""
    try:
        tarfile.data_filter(member, _TAR_DEST)
    except tarfile.SpecialFileError:
        return "not a regular file (device, pipe or socket)"
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        kind = "symlink" if member.issym() else "hard link"
        return f"{kind} to {safe_text(member.linkname)} points outside data.path; refused"
    except tarfile.FilterError as err:
        return f"refused by tarfile's data filter ({safe_text(str(err))})"
    return None


def too_large(size: int, max_bytes: int) -> str:
    return f"{size:,} bytes, more than the {max_bytes:,}-byte limit derived from data.max_pixels; not read"


def _relabel(rec: Record, **changes) -> Record:
    return Record(**{**rec.__dict__, **changes})


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"data.path {str(path)!r} does not exist")
    if not (path.is_dir() or zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
        raise SourceError(f"data.path {str(path)!r} is neither a directory nor a .zip/.tar/.tar.gz archive")


def folder_source(path: Path | str, max_bytes: int | None = None) -> Source:
    """Images from a directory, .zip, .tar or .tar.gz; the first sub-folder names the class.

    Every regular file is yielded (not only known image suffixes) so that a non-image file
    is reported by `prepare` rather than silently ignored. Tar members over `max_bytes` are
    yielded unread, as problems (files and zip members are read, and checked, by `prepare`).
    """
    path = Path(path)
    _check_exists(path)

    def label(rec: Record) -> Record:
        parts = PurePosixPath(rec.name).parts
        return _relabel(rec, label=parts[0] if len(parts) > 1 else UNLABELLED)

    if not path.is_dir() and not zipfile.is_zipfile(path):  # tar: one streaming pass, classes as met
        return Source(label(r) for r in _tar_records(path, max_bytes))
    entries, tops = _entries(path)
    return Source((label(r) for r in entries), total=len(entries), declared_classes=tops)


def unpaired_source(path: Path | str, max_bytes: int | None = None) -> Source:
    """CycleGAN's layout: trainA/ trainB/ (and optionally testA/ testB/, used as the val split)."""
    path = Path(path)
    _check_exists(path)
    if not path.is_dir() and not zipfile.is_zipfile(path):
        records = list(_tar_records(path, max_bytes))  # two-domain sets are small enough to list
    else:
        records, _ = _entries(path)
    has_test = any(PurePosixPath(r.name).parts[0] in ("testA", "testB") for r in records)
    out = []
    for rec in records:
        top = PurePosixPath(rec.name).parts[0]
        if top not in UNPAIRED_DIRS or len(PurePosixPath(rec.name).parts) < 2:
            out.append(_relabel(rec, label="A", problem=rec.problem or "not under trainA/ trainB/ testA/ testB/"))
            continue
        domain, split = UNPAIRED_DIRS[top]
        out.append(_relabel(rec, label=domain, split=split if has_test else None))
    for d in ("A", "B"):
        if not any(r.label == d and r.problem is None for r in out):
            raise SourceError(f"data.path {str(path)!r}: no files under train{d}/ (the unpaired layout needs both)")
    return Source(iter(out), total=len(out), domains=("A", "B"), paired=False)


def paired_source(path: Path | str, max_bytes: int | None = None) -> Source:
    """pix2pix-style pairs: A/ and B/ with files matched by their path minus the extension.

    Records come out pair by pair (A then B); a file without its partner is a problem
    record naming the missing side.
    """
    path = Path(path)
    _check_exists(path)
    is_tar = not path.is_dir() and not zipfile.is_zipfile(path)
    records = list(_tar_records(path, max_bytes)) if is_tar else _entries(path)[0]
    sides: dict[str, dict[str, list[Record]]] = {"A": {}, "B": {}}
    others = []
    for rec in records:
        parts = PurePosixPath(rec.name).parts
        if parts[0] not in sides or len(parts) < 2:
            others.append(_relabel(rec, label="A", problem=rec.problem or "not under A/ or B/ (paired layout)"))
            continue
        key = str(PurePosixPath(*parts[1:]).with_suffix(""))
        sides[parts[0]].setdefault(key, []).append(_relabel(rec, label=parts[0], pair=key))
    if not sides["A"] or not sides["B"]:
        raise SourceError(f"data.path {str(path)!r}: paired layout needs files under both A/ and B/")
    out = []
    for key in sorted(set(sides["A"]) | set(sides["B"])):
        a, b = sides["A"].get(key, []), sides["B"].get(key, [])
        if len(a) == 1 and len(b) == 1:
            out += [a[0], b[0]]
            continue
        for rec in a + b:
            if not a or not b:
                why = f"no matching file in {'B' if rec.label == 'A' else 'A'}/ for {key!r}"
            else:
                why = f"{key!r} matches several files in one domain ({', '.join(r.name for r in a + b)})"
            out.append(_relabel(rec, problem=rec.problem or why, pair=None))
    out += others
    return Source(iter(out), total=len(out), domains=("A", "B"), paired=True)
