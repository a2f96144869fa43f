"""Decode and validate input files, in worker processes: each record becomes an Outcome, a
uint8 [C, size, size] image or why it cannot be used. No file or archive member is read beyond
what an image within data.max_pixels can need, so an archive bomb cannot fill memory either."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
import zipfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import DataConfig
from pipeline.data.sources import Record, safe_text, too_large
from pipeline.errors import UserError

# the decoders a file may reach: plain raster formats, the service's list (Pillow would try every format it
# knows, and hand EPS to Ghostscript, an interpreter, where one is installed)
from pipeline.image_input import IMAGE_FORMATS

# Modes with a documented conversion rule (see `_to_mode`); anything else is refused.
# LAB is refused: Pillow converts it to RGB by copying channels, not by colour management.
SUPPORTED_MODES = {"1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "RGBa", "CMYK", "YCbCr", "HSV"}
SUPPORTED_MODES |= {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
BATCH = 32  # records per worker task
# The most bytes per pixel an image file can need: 16-bit RGBA/CMYK (PNG, TIFF) and 64-bit
# float greyscale (TIFF) take 8; plus room for metadata (ICC profiles, EXIF, XMP, thumbnails).
FILE_BYTES_PER_PIXEL = 8
FILE_METADATA_BYTES = 16 << 20


class BadImage(UserError, ValueError):
    """One input file cannot be used; the message says why."""

    def __init__(self, message: str):
        super().__init__(safe_text(str(message)))


def max_file_bytes(cfg: DataConfig) -> int:
    """The largest file or archive member worth reading: what the largest image allowed by
    data.max_pixels can take, with generous room. Anything bigger is refused unread."""
    return FILE_BYTES_PER_PIXEL * cfg.max_pixels + FILE_METADATA_BYTES


@dataclass
class Outcome:
    record: Record
    image: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    sha256: str = ""
    pixhash: str = ""
    reason: str | None = None
    coloured: bool = False  # a colour image made grey (data.channels: 1)


def decoded(records: Iterator[Record], cfg: DataConfig, workers: int) -> Iterator[Outcome]:
    """Outcomes in record order. With workers > 1, decoding runs in that many processes with
    a bounded number of batches in flight (memory stays flat, the order is kept)."""
    if workers <= 1:
        yield from (_outcome(r, cfg) for r in records)
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


# Per worker process, set by the pool's initializer (module state is all it can leave a worker)
_WORKER_CFG: DataConfig | None = None


def _init_worker(cfg: DataConfig) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg
    os.environ["OMP_NUM_THREADS"] = "1"


def _decode_batch(records: list[Record]) -> list[Outcome]:
    assert _WORKER_CFG is not None
    return [_outcome(r, _WORKER_CFG) for r in records]


def _outcome(record: Record, cfg: DataConfig) -> Outcome:
    try:
        image, size, sha, pixhash, coloured = decode(record, cfg)
    except BadImage as err:
        return Outcome(record, reason=str(err))
    # the decoder already read the content: don't ship it back from a worker
    slim = Record(**{**record.__dict__, "data": None, "array": None})
    return Outcome(slim, image, size, sha, pixhash, coloured=coloured)


def decode(record: Record, cfg: DataConfig) -> tuple[np.ndarray, tuple[int, int], str, str, bool]:
    """Fully decode one record: uint8 [C, size, size], original (w, h), content sha256, the
    sha256 of its decoded pixels (what duplicate detection compares), and whether a colour
    image was made grey (data.channels: 1)."""
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
                img = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
                img.load()  # decode every byte now, so truncation is caught here (first frame of animations)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage(f"more than data.max_pixels={cfg.max_pixels} pixels (decompression-bomb guard)") from None
        except UnidentifiedImageError:
            raise BadImage(f"not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise BadImage(f"cannot be decoded ({err})") from None
        if min(img.size) < cfg.smallest_side:
            raise BadImage(
                f"{img.size[0]}x{img.size[1]} is smaller than data.min_size={cfg.smallest_side} px "
                f"(default: half of data.image_size)"
            )
    original = img.size
    img = _to_mode(img)
    coloured = cfg.channels == 1 and img.mode == "RGB" and _in_colour(img)
    img = img.convert("L" if cfg.channels == 1 else "RGB")
    full = np.asarray(img, dtype=np.uint8)
    pixhash = hashlib.sha256(f"{full.shape}".encode() + full.tobytes()).hexdigest()
    arr = np.asarray(_square_resize(img, cfg.image_size), dtype=np.uint8)
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy(), original, sha, pixhash, coloured


_ZIPS: dict[str, zipfile.ZipFile] = {}  # per process: archives stay open across records (no re-reading the index)


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


def _in_colour(img: Image.Image) -> bool:
    """Whether an RGB image holds any colour (grey images saved as RGB do not)."""
    r, g, b = (np.asarray(band) for band in img.split())
    return not (np.array_equal(r, g) and np.array_equal(g, b))


def _to_mode(img: Image.Image) -> Image.Image:
    """Documented conversion rules (modes outside SUPPORTED_MODES are refused): EXIF
    orientation applied; 16-bit and 32-bit integer scaled to 8-bit by their range; float
    taken as [0, 1] if its maximum is <= 1, else [0, 255]; palette expanded; alpha
    composited onto black; CMYK, YCbCr, HSV and 1-bit converted by Pillow; L or RGB out. The
    caller then takes L (1 channel, ITU-R 601 luma) or RGB, as data.channels asks."""
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
    return img


def _square_resize(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    if w != h:  # centre crop to a square first so objects keep their aspect ratio
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.LANCZOS if side > size else Image.BICUBIC)
    return img
