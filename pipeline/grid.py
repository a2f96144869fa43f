"""Image grids as PNG, in plain NumPy + Pillow so that inference never needs torch."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.artifacts import write_bytes


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map float images in [-1, 1] (or uint8 passthrough) to uint8 [0, 255]."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile [N, C, H, W] images (C = 1 or 3) into one [H', W', C] uint8 array, `nrow` per row."""
    if images.ndim != 4:
        raise ValueError(f"expected images shaped [N, C, H, W], got {images.shape}")
    images = to_uint8(images)
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return grid


def png_bytes(array: np.ndarray, scale: int = 1) -> bytes:
    """Encode an [H, W, C] uint8 array as PNG, optionally enlarged by an integer factor."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_panels(panels: list[np.ndarray], path: Path | str, nrow: int = 4, gap: int = 8, scale: int = 2) -> Path:
    """Write grids of several image sets side by side (e.g. real | generated) as one PNG."""
    grids = [make_grid(p, nrow) for p in panels]
    height = max(g.shape[0] for g in grids)
    channels = max(g.shape[2] for g in grids)
    parts = []
    for i, g in enumerate(grids):
        g = np.pad(g, ((0, height - g.shape[0]), (0, 0), (0, 0)))
        parts.append(np.repeat(g, channels // g.shape[2], axis=2))
        if i < len(grids) - 1:
            parts.append(np.full((height, gap, channels), 128, np.uint8))  # grey divider
    write_bytes(path, png_bytes(np.concatenate(parts, axis=1), scale=scale))
    return Path(path)


def save_grid(images: np.ndarray, path: Path | str, nrow: int | None = None, scale: int = 2) -> Path:
    """Write a grid PNG of [N, C, H, W] images atomically; returns the path."""
    write_bytes(path, png_bytes(make_grid(images, nrow), scale=scale))
    return Path(path)
