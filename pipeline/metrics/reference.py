"""Real-data reference features, computed once per data set, extractor and resolution.

The `reference` stage embeds the real images every evaluation compares against (the training
split and the held-out split; for translation, real B and the untranslated held-out A) and
writes them to models/reference.pt with the key they were made under: the SHA-256 of the
prepared arrays, the extractor, its weights' SHA-256 and input resolution. DVC caches the file
by exactly those inputs, so every experiment that changes only the model or training reuses it;
with the Inception extractor that saves minutes per evaluation. The evaluate stage checks the
key against the data and extractor it is about to use and refuses a mismatched file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from pipeline import layout
from pipeline.artifacts import save_torch
from pipeline.config import Params
from pipeline.dataset import load_split
from pipeline.errors import MissingInput

# (name, split, domain): what each task compares against
SETS = {
    "generate": (("train", "train", None), ("val", "val", None)),
    "translate": (("train_B", "train", "B"), ("val_B", "val", "B"), ("val_A", "val", "A")),
}


def _arrays(prepared_dir: Path | str, task: str) -> dict[str, np.ndarray]:
    return {name: load_split(prepared_dir, split, domain).images for name, split, domain in SETS[task]}


def dataset_sha256(arrays: dict[str, np.ndarray]) -> str:
    """One hash of the pixels (and shapes) of every image set the reference covers."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.shape}:{a.dtype}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def key_of(task: str, arrays: dict[str, np.ndarray], extractor) -> dict:
    first = next(iter(arrays.values()))
    return {
        "task": task,
        "dataset_sha256": dataset_sha256(arrays),
        "image_size": int(first.shape[-1]),
        "counts": {name: len(a) for name, a in arrays.items()},
        **extractor.identity,
    }


def compute(params: Params, prepared_dir: Path | str, extractor) -> dict:
    """{"key": ..., "features": {set name: float32 [N, F]}} for the task's image sets."""
    arrays = _arrays(prepared_dir, params.task)
    features = {name: extractor(images, label=f"real {name}").float() for name, images in arrays.items()}
    return {"key": key_of(params.task, arrays, extractor), "features": features}


def write(params: Params, prepared_dir: Path | str, extractor, out: Path | str = layout.REFERENCE) -> dict:
    blob = compute(params, prepared_dir, extractor)
    save_torch(out, blob)
    return blob


def features(params: Params, prepared_dir: Path | str, extractor, path: Path | str | None = None) -> dict:
    """The reference features for this data and extractor: read from `path` when given and
    present (its key must match), else computed here."""
    if path is None or not Path(path).is_file():
        return compute(params, prepared_dir, extractor)["features"]
    blob = torch.load(path, map_location="cpu", weights_only=True)
    expected = key_of(params.task, _arrays(prepared_dir, params.task), extractor)
    stored = blob.get("key", {})
    diff = sorted(k for k in expected if stored.get(k) != expected[k])
    if diff:
        raise MissingInput(f"{path}: made for other {', '.join(diff)} than this evaluation uses; "
                           "rerun the reference stage (dvc repro)")  # fmt: skip
    return blob["features"]
