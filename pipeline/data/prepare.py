"""`prepare` stage: any source -> one uniform prepared dataset.

Output layout (a contract, see DESIGN.md), all under `data/prepared/`:
  {train,val}_images.npy  uint8 [N, C, H, W]   (memory-mappable)
  {train,val}_labels.npy  int64 [N]            (index into manifest "classes")
  manifest.json           source, classes, every source file with sha256, label, split
  stats.json              counts per class and split, pixel mean/std, original sizes seen
The train/val split is decided by each item's content hash, so adding images never moves
existing ones between splits.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from pipeline.artifacts import atomic_path, write_json
from pipeline.config import DataConfig
from pipeline.data.sources import Record, SourceError, digits_records, folder_records, idx_records
from pipeline.errors import UserError


class BadImage(UserError, ValueError):
    """One input file cannot be used; the message says why."""


class DataError(UserError, ValueError):
    """The dataset as a whole cannot be prepared; the message lists every offending file."""


@dataclass
class PrepareResult:
    out_dir: Path
    counts: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)


def records_for(cfg: DataConfig) -> Iterable[Record]:
    if cfg.source == "digits":
        return digits_records()
    if cfg.source == "idx":
        return idx_records(cfg.path or "", cfg.class_names)
    return folder_records(cfg.path or "")


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Documented conversion rules: EXIF orientation applied; 16-bit scaled to 8-bit;
    palette and CMYK converted; alpha composited onto black; then L (1 channel) or RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "RGBA", "PA"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, 1, ...
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


def decode(record: Record, cfg: DataConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """Fully decode one record into uint8 [C, size, size]; also return its original (w, h)."""
    if record.array is not None:
        img = Image.fromarray(record.array)
    else:
        if not record.data:
            raise BadImage("empty file (0 bytes)")
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(record.data))
                img.load()  # decode every byte now, so truncation is caught here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage(f"more than data.max_pixels={cfg.max_pixels} pixels (decompression-bomb guard)") from None
        except UnidentifiedImageError:
            raise BadImage("not an image (no decoder recognises its content)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise BadImage(f"cannot be decoded ({err})") from None
    original = img.size
    img = _to_mode(img, cfg.channels)
    arr = np.asarray(_square_resize(img, cfg.image_size), dtype=np.uint8)
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy(), original


def split_of(sha256: str, val_fraction: float) -> str:
    """Deterministic split from the content hash: stable when the dataset grows."""
    return "val" if int(sha256[:8], 16) / 16**8 < val_fraction else "train"


def _class_order(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))


def prepare(cfg: DataConfig, out_dir: Path | str, report_path: Path | str) -> PrepareResult:
    """Decode, validate, resize and split a source; write the prepared dataset atomically.

    With `on_error: fail` any bad file aborts with a DataError naming every bad file and
    nothing is written; with `skip` bad files are left out and listed in the report.
    """
    out_dir, report_path = Path(out_dir), Path(report_path)
    images: list[np.ndarray] = []
    kept: list[tuple[Record, str]] = []
    skipped: list[dict[str, str]] = []
    sizes: Counter[str] = Counter()
    try:
        records = list(records_for(cfg))
    except SourceError as err:
        raise DataError(str(err)) from None
    for rec in tqdm(records, desc="prepare", unit="img", dynamic_ncols=True):
        try:
            arr, (w, h) = decode(rec, cfg)
        except BadImage as err:
            skipped.append({"file": rec.name, "reason": str(err)})
            continue
        images.append(arr)
        kept.append((rec, hashlib.sha256(rec.data).hexdigest()))
        sizes[f"{w}x{h}"] += 1

    report = {
        "source": cfg.source,
        "path": cfg.path,
        "on_error": cfg.on_error,
        "files_seen": len(records),
        "files_used": len(kept),
        "skipped": skipped,
    }
    if skipped and cfg.on_error == "fail":
        listing = "\n".join(f"  {s['file']}: {s['reason']}" for s in skipped)
        raise DataError(
            f"{len(skipped)} of {len(records)} input files are unusable (data.on_error=fail; "
            f"set it to 'skip' to leave them out):\n{listing}"
        )
    if not kept:
        raise DataError(f"no usable images in data source {cfg.source!r} {cfg.path or ''}".rstrip())

    classes = list(cfg.class_names) if cfg.class_names else _class_order(rec.label for rec, _ in kept)
    index = {c: i for i, c in enumerate(classes)}
    splits = [split_of(sha, cfg.val_fraction) for _, sha in kept]
    if "val" not in splits or "train" not in splits:  # tiny datasets: force one val item
        splits = ["train"] * len(kept)
        splits[min(range(len(kept)), key=lambda i: kept[i][1])] = "val"
        if len(kept) < 2:
            raise DataError("need at least 2 usable images for a train/val split")

    stack = np.stack(images)
    labels = np.array([index[rec.label] for rec, _ in kept], dtype=np.int64)
    files = [
        {"name": rec.name, "sha256": sha, "label": rec.label, "split": sp}
        for (rec, sha), sp in zip(kept, splits, strict=True)
    ]
    stats: dict = {"num_classes": len(classes), "classes": classes, "splits": {}, "original_sizes": dict(sizes)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in ("train", "val"):
            mask = np.array([s == split for s in splits])
            np.save(tmp / f"{split}_images.npy", stack[mask])
            np.save(tmp / f"{split}_labels.npy", labels[mask])
            pix = stack[mask].astype(np.float64) / 255.0
            stats["splits"][split] = {
                "count": int(mask.sum()),
                "per_class": {c: int((labels[mask] == i).sum()) for i, c in enumerate(classes)},
                "pixel_mean": pix.mean(axis=(0, 2, 3)).round(6).tolist(),
                "pixel_std": pix.std(axis=(0, 2, 3)).round(6).tolist(),
            }
        manifest = {
            "source": cfg.source,
            "path": cfg.path,
            "image_size": cfg.image_size,
            "channels": cfg.channels,
            "classes": classes,
            "files": files,
        }
        write_json(tmp / "manifest.json", manifest)
        write_json(tmp / "stats.json", stats)
    write_json(report_path, report)
    counts = {s: stats["splits"][s]["count"] for s in ("train", "val")}
    return PrepareResult(out_dir=out_dir, counts=counts, skipped=skipped)
