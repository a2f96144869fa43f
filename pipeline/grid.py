"""Image grids as PNG, in plain NumPy + Pillow so that inference never needs torch; titled and
labelled figures of several grids through matplotlib (imported only when one is drawn)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipeline.artifacts import write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def labelled_figure(
    panels: Sequence[np.ndarray],
    labels: Sequence[str],
    title: str = "",
    nrow: int | None = None,
    stacked: bool = False,
    scale: float = 2,
) -> Figure:
    """A matplotlib Figure of image sets ([N, C, H, W] each, tiled by make_grid with `nrow` per
    row) side by side, each with its label above, or `stacked` one below the other, each with its
    label at its left; `title` above them all. Text is drawn as given (a `$` is no mathtext)."""
    from matplotlib.figure import Figure

    if len(panels) != len(labels) or not panels:
        raise ValueError(f"{len(panels)} image sets for {len(labels)} labels")
    grids = [make_grid(p, nrow) for p in panels]
    inch = scale / 100  # figure inches per image pixel at 100 dpi
    heights, widths = [g.shape[0] * inch for g in grids], [g.shape[1] * inch for g in grids]
    lines = [label.split("\n") for label in labels]
    longest = max(len(line) for label in lines for line in label)
    top = 0.4 * bool(title) + 0.1
    if stacked:  # room for the longest label line at the left, about 0.075 inch a character
        size = (0.3 + 0.075 * longest + max(widths), top + sum(heights) + 0.1 * len(grids))
        ratios = {"height_ratios": heights}
    else:
        size = (0.2 + sum(widths) + 0.15 * len(grids), top + 0.2 * max(map(len, lines)) + 0.1 + max(heights))
        ratios = {"width_ratios": widths}
    fig = Figure(figsize=(max(size[0], 0.3 + 0.09 * len(title)), size[1]), dpi=100, layout="constrained")
    axes = fig.subplots(*((len(grids), 1) if stacked else (1, len(grids))), squeeze=False, gridspec_kw=ratios).flat
    for ax, grid, label in zip(axes, grids, labels, strict=True):
        ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        ax.set_anchor("W" if stacked else "N")  # against its label, where the layout left room for it
        if stacked:
            ax.set_ylabel(label, rotation=0, ha="right", va="center", parse_math=False)
        else:
            ax.set_title(label, parse_math=False)
    if title:
        fig.suptitle(title, parse_math=False)
    return fig


def figure_png(fig: Figure) -> bytes:
    """A matplotlib Figure as PNG bytes, without a version stamp: the bytes depend on the picture."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write a matplotlib Figure as PNG atomically; returns the path."""
    write_bytes(path, figure_png(fig))
    return Path(path)
