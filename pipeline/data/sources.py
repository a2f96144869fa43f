"""Data sources: each yields raw records; `prepare` turns any of them into one format.

A record is one source item: a stable name, its raw bytes (for hashing and provenance),
a decoded-later payload, and a class name. Sources never resize or validate; that is
`prepare`'s job, so every source gets the same rules.
"""

from __future__ import annotations

import gzip
import re
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Record:
    name: str  # stable identifier, e.g. "3/img_001.png" or "digits/0042"
    data: bytes  # raw content (encoded file, or the array's bytes for array sources)
    label: str
    array: np.ndarray | None = None  # already-decoded pixels (array sources), else None


class SourceError(UserError, ValueError):
    """The data source itself is unusable (missing path, unknown archive, no images)."""


def digits_records() -> Iterator[Record]:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i, (img, target) in enumerate(zip(bunch.images, bunch.target, strict=True)):
        pixels = np.rint(img * (255.0 / 16.0)).astype(np.uint8)  # digits are 0..16 ink levels
        yield Record(name=f"digits/{i:04d}", data=pixels.tobytes(), label=str(int(target)), array=pixels)


IDX_IMAGES = re.compile(r"^(?P<stem>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")
_IDX_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file (the MNIST family's format: magic, big-endian dims, raw bytes), gzipped or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 + 4 * ndim:
        raise SourceError(f"{path}: too short for an IDX header")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
        raise SourceError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise SourceError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes) but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


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


def _label_for(rel: PurePosixPath) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else UNLABELLED


def _wanted(rel: PurePosixPath) -> bool:
    # hidden files and macOS resource forks are never data
    return not any(p.startswith(".") or p == "__MACOSX" for p in rel.parts)


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise SourceError(f"{archive}: member {name!r} escapes the archive (absolute path or '..'); refusing it")
    return rel


def folder_records(path: Path | str) -> Iterator[Record]:
    """Images from a directory, .zip, .tar or .tar.gz; the first sub-folder names the class.

    Every regular file is yielded (not only known image suffixes) so that a non-image file
    is reported by `prepare` rather than silently ignored.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"data.path {str(path)!r} does not exist")
    if path.is_dir():
        root = path.resolve()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = PurePosixPath(f.relative_to(path).as_posix())
            if not _wanted(rel):
                continue
            if not f.resolve().is_relative_to(root):
                raise SourceError(f"{f}: symlink points outside {path}; refusing it")
            yield Record(name=str(rel), data=f.read_bytes(), label=_label_for(rel))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                rel = _safe_member(info.filename, path)
                if _wanted(rel):
                    yield Record(name=str(rel), data=zf.read(info), label=_label_for(rel))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            for member in sorted(tf.getmembers(), key=lambda m: m.name):
                if not member.isfile():
                    continue
                rel = _safe_member(member.name, path)
                fh = tf.extractfile(member)
                if _wanted(rel) and fh is not None:
                    yield Record(name=str(rel), data=fh.read(), label=_label_for(rel))
    else:
        raise SourceError(f"data.path {str(path)!r} is neither a directory nor a .zip/.tar/.tar.gz archive")
