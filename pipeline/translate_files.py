"""Translating image files with an exported translator (`ganpipe translate`): one file, or a folder
searched recursively whose output names mirror the input's. Onnxruntime, NumPy and Pillow only; no torch.

A file that cannot be translated (not an image, over the pixel limit, a decompression bomb) is
skipped and reported, the rest are translated; an output location that cannot be written ends the
run, since every later file would fail too."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipeline.artifacts import atomic_path
from pipeline.errors import UserError
from pipeline.image_input import ImageRejected, open_image
from pipeline.inference import OnnxTranslator

WRITTEN_AS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # output suffixes kept; any other is written as PNG


@dataclass(frozen=True)
class Translated:
    done: int  # files written
    total: int  # files found
    skipped: list[str]  # "<file>: <why>", one per file not translated


def plan(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """Each input file and the file its translation is written to, the output folder created: a
    folder's files (recursively, sorted) mirrored under `dst`; one file to `dst`, or into it when
    it is a folder. An output suffix Pillow is not asked to write (.tif, .gif, ...) becomes .png."""
    if not src.exists():
        raise UserError(f"{src}: input not found")
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise UserError(f"{dst}: exists and is not a folder (input {src} is a folder)")
        jobs = [(f, dst / f.relative_to(src)) for f in sorted(src.rglob("*")) if f.is_file()]
        folder = dst
    else:
        jobs = [(src, dst / src.name if dst.is_dir() else dst)]
        folder = jobs[0][1].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{folder}: cannot create the output folder: {err.strerror or err}") from None
    return [(f, out if out.suffix.lower() in WRITTEN_AS else out.with_suffix(".png")) for f, out in jobs]


def translate_files(model: OnnxTranslator, src: Path, dst: Path, max_pixels: int) -> Translated:
    """Translate `src` (a file or a folder, see `plan`) into `dst`; each image is refused from its
    header before decoding when over `max_pixels`. A progress bar for more than one file."""
    jobs = plan(src, dst)
    skipped, done = [], 0
    for f, out in tqdm(jobs, desc="translate", unit="img", disable=len(jobs) < 2, dynamic_ncols=True):
        if out.is_dir():  # the atomic writer refuses it too, but as a write error that ends the run
            skipped.append(f"{f}: its output {out} is a folder")
            continue
        try:
            with warnings.catch_warnings():  # Pillow's multi-line warning; our own limit reports the size
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = open_image(f, max_pixels)  # refused from the header, before decoding
            with img:
                result = model.translate_image(img, max_pixels)
        except ImageRejected as err:
            skipped.append(f"{f}: {err}")
            continue
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as tmp:
                result.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
        except OSError as err:  # the output location is unusable: every later file would fail too
            raise UserError(f"{out}: cannot write: {err.strerror or err} ({done} file(s) written before it)") from None
        done += 1
    return Translated(done, len(jobs), skipped)
