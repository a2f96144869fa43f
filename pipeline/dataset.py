"""Reading the prepared dataset: memory-mapped arrays and a fast in-memory batch sampler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import read_json
from pipeline.errors import MissingInput
from pipeline.runtime import seeded_generator


@dataclass(frozen=True)
class PreparedSplit:
    images: np.ndarray  # uint8 [N, C, H, W], memory-mapped
    labels: np.ndarray  # int64 [N]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def channel_classes(prepared_dir: Path | str) -> list[str]:
    """The classes each channel's content belongs to (stacked digits), or [] for other data."""
    return read_json(Path(prepared_dir) / "manifest.json").get("channel_classes", [])


def channel_labels(prepared_dir: Path | str, split: str) -> np.ndarray:
    """int64 [N, C]: the class of each channel of each image of `split` (indices into `channel_classes`),
    from the manifest, which lists a split's files in the arrays' order."""
    files = read_json(Path(prepared_dir) / "manifest.json")["files"]
    rows = [f["channel_labels"] for f in files if f["split"] == split]
    return np.array(rows, dtype=np.int64).reshape(len(rows), -1)


def load_split(prepared_dir: Path | str, split: str, domain: str | None = None) -> PreparedSplit:
    """Open one split of `data/prepared/` without reading it all into RAM. Two-domain data
    (style transfer) is opened one domain at a time ("A" or "B"), as a single class."""
    d = Path(prepared_dir)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    try:
        if domain is not None:
            images = np.load(d / f"{split}_{domain}.npy", mmap_mode="r")
            return PreparedSplit(images=images, labels=np.zeros(len(images), dtype=np.int64), classes=[domain])
        images = np.load(d / f"{split}_images.npy", mmap_mode="r")
        labels = np.load(d / f"{split}_labels.npy")
        classes = read_json(d / "manifest.json")["classes"]
    except FileNotFoundError as err:
        raise MissingInput(f"{err.filename}: prepared data missing; run the prepare stage first") from None
    return PreparedSplit(images=images, labels=labels, classes=classes)


def stable_subset(
    prepared_dir: Path | str, split: str, data: PreparedSplit, fraction: float, domain: str | None = None
) -> PreparedSplit:
    """The items of `split` whose content hash falls in the first `fraction` of the hash
    range: the same items on every run, and a superset when the fraction grows."""
    if fraction >= 1.0:
        return data
    files = [
        f
        for f in read_json(Path(prepared_dir) / "manifest.json")["files"]
        if f["split"] == split and (domain is None or f["label"] == domain)
    ]
    keep = np.array([int(f["sha256"][8:16], 16) / 16**8 < fraction for f in files])
    if not keep.any():
        raise MissingInput(f"train.data_fraction={fraction} leaves no {split} images; raise it")
    return PreparedSplit(images=data.images[keep], labels=data.labels[keep], classes=data.classes)


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range every model here works in."""
    t = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images  # copies read-only mmaps
    return t.float().div_(127.5).sub_(1.0)


class BatchSampler:
    """Random mini-batches with replacement across epochs, driven by its own torch.Generator.

    The whole split lives in one float tensor (small datasets) and batches are index
    gathers, which is far faster than a DataLoader for 32x32 images. Its generator state
    is part of the training checkpoint, so a resumed run draws the same batches. Under DDP
    every process holds the same generator and takes its own slice of each global batch
    (the role DistributedSampler plays for a DataLoader).
    """

    def __init__(self, split: PreparedSplit, batch_size: int, seed: int, device: torch.device):
        self.images = to_float(split.images).to(device)
        self.labels = torch.as_tensor(split.labels).to(device)
        self.batch_size = batch_size
        self.generator = seeded_generator(seed, device)
        self.device = device

    def __len__(self) -> int:
        return self.images.shape[0]

    def draw(self) -> torch.Tensor:
        """Indices of the next (global) batch. Every process draws the same ones."""
        return torch.randint(len(self), (self.batch_size,), generator=self.generator, device=self.generator.device)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.device)
        return self.images[idx], self.labels[idx]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.take(self.draw())
