"""The prepared dataset's image arrays: uint8 [N, C, H, W] .npy files, memory-mappable,
written an image at a time as they arrive, so memory stays flat whatever the dataset size."""

import shutil
from pathlib import Path

import numpy as np


class ArrayWriter:
    """Appends [C, H, W] uint8 images to a raw file and keeps running pixel sums; `finish`
    turns the raw file into an .npy file (header + the same bytes) without loading it."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path, self.shape, self.n = path, shape, 0
        self.fh = open(path.with_suffix(".raw"), "wb")  # noqa: SIM115 (closed in finish)
        self.sum, self.sumsq = np.zeros(shape[0]), np.zeros(shape[0])

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
