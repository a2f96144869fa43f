"""Sampling as StyleGAN users know it, from an exported ONNX generator (no torch): one image per
seed (`ganpipe generate --seeds 0-15 --outdir out`) and walks between seeds (`ganpipe
interpolate`). A seed's image is the one `ganpipe generate -n 1 --seed S` draws, and walks run in
z space along the great circle between seeds' z (pipeline/latents.py, shared with the train
stage's walk picture). The exported graph maps z to images, so w space (StyleGAN2's) is not
reachable from the ONNX file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import latents
from pipeline.artifacts import write_bytes
from pipeline.errors import UserError
from pipeline.grid import make_grid, to_uint8
from pipeline.inference import PSI, OnnxGenerator

STILL = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # what a picture is written as
MOVING = {".gif": "GIF", ".webp": "WEBP"}  # what an animation is written as
MAX_SEEDS = 10_000  # one file each: a typo such as 0-1000000 is refused, not a million files


def parse_seeds(text: str, seed_max: int) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (StyleGAN's --seeds), in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not (first.isascii() and first.isdigit() and (not sep or (last.isascii() and last.isdigit()))):
            raise UserError(f"--seeds: seeds and ranges such as 0-15 or 1,5,9, got {text[:40]!r}")
        low, high = int(first), int(last) if sep else int(first)
        if low > high or high > seed_max:
            raise UserError(f"--seeds: {part.strip()} is not a range of seeds from 0 to {seed_max}")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise UserError(f"--seeds: at most {MAX_SEEDS} seeds, got more in {text[:40]!r}")
        seeds.extend(range(low, high + 1))
    return seeds


def format_of(path: Path | str, formats: dict[str, str], flag: str) -> str:
    """The Pillow format a file name asks for, or one line naming the flag and what it takes."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise UserError(f"{flag}: {path}: write one of {', '.join(sorted(formats))} (the format follows the name)")
    return formats[suffix]


def seed_latents(model: OnnxGenerator, seeds: list[int]) -> np.ndarray:
    """[len(seeds), latent_dim]: each seed's z, the one generate(1, seed) draws."""
    return latents.seed_latents(seeds, model.info.latent_dim)


def render(model: OnnxGenerator, z: np.ndarray, label: str | None = None, psi: float | None = None) -> np.ndarray:
    """[N, C, H, W] images in [-1, 1] of the latents `z` ([N, latent_dim]), all of class `label`."""
    labels = model.resolve_labels(len(z), None if label is None else [label])
    feed = model.feed(z.astype(np.float32), labels)
    truncation = model.resolve_psi(psi)
    if truncation is not None:
        feed[PSI] = truncation
    return model.session.run(["images"], feed)[0]


def walk(model: OnnxGenerator, seeds: list[int], steps: int) -> np.ndarray:
    """[(len(seeds) - 1) * steps + 1, latent_dim] z: `steps` per leg, each seed's own z at its place."""
    if len(seeds) < 2:
        raise UserError("--seeds: a walk needs two seeds or more, e.g. 0,7 or 0-3")
    return latents.walk(seed_latents(model, seeds), steps)


def pictures(images: np.ndarray, scale: int) -> list[Image.Image]:
    """One Pillow image per [C, H, W] image, enlarged by an integer factor."""
    out = []
    for array in to_uint8(images).transpose(0, 2, 3, 1):
        img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        out.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img)
    return out


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def save_picture(images: np.ndarray, path: Path | str, nrow: int | None, scale: int, flag: str = "--out") -> Path:
    """A grid of [N, C, H, W] images, written atomically in the format its name asks for."""
    fmt = format_of(path, STILL, flag)
    (img,) = pictures(make_grid(images, nrow).transpose(2, 0, 1)[None], scale)  # the grid as one image
    write_bytes(path, encode(img, fmt))
    return Path(path)


def save_each(images: np.ndarray, paths: list[Path], scale: int) -> list[Path]:
    """Each [C, H, W] image alone (no grid border) to its path, atomically, in the format its name asks for."""
    formats = [format_of(path, STILL, "--outdir") for path in paths]
    for img, path, fmt in zip(pictures(images, scale), paths, formats, strict=True):
        write_bytes(path, encode(img, fmt))
    return paths


def save_animation(images: np.ndarray, path: Path | str, scale: int, frame_ms: int) -> Path:
    """The images as the frames of a looping GIF or WebP, written atomically."""
    fmt = format_of(path, MOVING, "--animation")
    first, *rest = pictures(images, scale)
    buf = io.BytesIO()
    first.save(buf, format=fmt, save_all=True, append_images=rest, duration=frame_ms, loop=0,
               **({"lossless": True} if fmt == "WEBP" else {}))  # fmt: skip
    write_bytes(path, buf.getvalue())
    return Path(path)
