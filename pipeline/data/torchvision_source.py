"""data.source torchvision: a torchvision.datasets class reading files already on disk (data.path is its
`root`), always with download=False. torchvision is imported here, when this source is used, and
nowhere else in the data pipeline.

torchvision supplies what only it knows: each dataset's on-disk format, which items belong to which
official split, the labels and the class names, and, for CIFAR, SVHN, STL10, CelebA and Flowers102,
the md5 check of the official files (kept: a partial or modified copy is refused, never downloaded
over). The pixels go through the same `decode` as every other source. Array datasets (CIFAR, the
MNIST family, SVHN, STL10) yield decoded pixels; datasets of image files (ImageFolder, Flowers102,
CelebA) and LSUN's database yield the files' bytes unopened, so the project's decoder reads them with
its decompression-bomb guard, its list of formats and its documented colour rules, not torchvision's
loader (a plain `Image.open(...).convert("RGB")`, which drops alpha instead of compositing it).

Record names carry the official split (`test/00042`, `train/image_00001.jpg`); when both a train
split and a test/val split are read, the official split decides train/val (as CycleGAN's testA/testB
do); otherwise the content hash does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.data.sources import UNLABELLED, Record, Source, SourceError

VAL_SPLITS = {"test", "val", "valid"}  # official splits that become the val split (with a train split read)
LSUN_CATEGORIES = ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room", "dining_room", "kitchen",
                   "living_room", "restaurant", "tower")  # fmt: skip


def expected_files(dataset: str, splits: tuple[str, ...]) -> list[str]:
    """The files (a trailing '/': folders) under the root that torchvision's `dataset` reads for `splits`."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, dataset)
    if dataset in ("CIFAR10", "CIFAR100"):
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{f}" for f in names]
    if dataset in ("MNIST", "FashionMNIST"):
        return [f"{dataset}/raw/{os.path.splitext(f)[0]}" for f, _ in cls.resources]
    if dataset == "SVHN":
        return [cls.split_list[s][1] for s in splits]
    if dataset == "STL10":  # torchvision checks all five whichever split is read
        return [f"{cls.base_folder}/{f}" for f, _ in cls.train_list + cls.test_list]
    if dataset == "CelebA":
        texts = [f for _, _, f in cls.file_list if not f.endswith((".zip", ".7z"))]  # the archive may be deleted
        return [f"{cls.base_folder}/{f}" for f in ["img_align_celeba/", *texts]]
    if dataset == "Flowers102":
        return ["flowers-102/jpg/", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"]
    if dataset == "LSUN":
        return [f"<category>_{s}_lmdb/" for s in splits]
    return ["<class>/<image> sub-folders"]  # ImageFolder


def _missing(root: Path, dataset: str, splits: tuple[str, ...]) -> list[str]:
    if dataset == "LSUN":
        return [
            f for f, s in zip(expected_files(dataset, splits), splits, strict=True) if not _lsun_categories(root, s)
        ]
    if dataset == "ImageFolder":
        return [] if root.is_dir() else expected_files(dataset, splits)
    return [f for f in expected_files(dataset, splits) if not (root / f).exists()]


def _lsun_categories(root: Path, split: str) -> list[str]:
    return [c for c in LSUN_CATEGORIES if (root / f"{c}_{split}_lmdb").is_dir()]


def torchvision_source(dataset: str, root: Path | str, splits: tuple[str, ...],
                       class_names: list[str] | None = None) -> Source:  # fmt: skip
    """Every item of `dataset`'s `splits` under `root`; a missing or refused file is one SourceError line."""
    root = Path(root)
    where = f"data.path {str(root)!r}"
    if dataset == "LSUN":
        want = f"{' and '.join(f'<category>_{s}_lmdb/' for s in splits)} (<category>: {', '.join(LSUN_CATEGORIES)})"
    else:
        want = ", ".join(expected_files(dataset, splits))
    missing = _missing(root, dataset, splits)
    if missing:
        lacks = "does not exist" if not root.exists() else f"lacks {', '.join(missing)}"
        raise SourceError(f"{where} {lacks}: torchvision's {dataset} expects {want} there (data.source torchvision "
                          "never downloads: put the official files there)")  # fmt: skip
    opened = []
    for split in splits or (None,):
        try:
            opened.append((split, _open(dataset, root, split)))
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise SourceError(f"{where}: torchvision's {dataset} refuses its files ({err}); its md5 check of "
                              f"{want} against the official release fails: put the official files there, "
                              "unmodified") from None  # fmt: skip
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:  # unreadable, or not in its format
            raise SourceError(f"{where}: torchvision's {dataset} cannot read its files ({err})") from None
    read = {s for s in splits}
    fixed = bool(read & VAL_SPLITS) and bool(read - VAL_SPLITS)
    classes = class_names or _classes(dataset, opened)
    records = _records(dataset, root, opened, classes, fixed)
    notes = {"torchvision": {"dataset": dataset, "splits": list(splits)}}
    total = sum(len(ds) for _, ds in opened)
    return Source(records, total=total, declared_classes=list(classes), ordered_classes=True, notes=notes)


def _open(dataset: str, root: Path, split: str | None):
    import torchvision.datasets as tvd

    cls = getattr(tvd, dataset)
    if dataset in ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST"):
        return cls(str(root), train=split == "train", download=False)
    if dataset in ("SVHN", "STL10", "Flowers102"):
        extra = {"loader": str} if dataset == "Flowers102" else {}  # ds[i] is the file's path: `decode` reads it
        return cls(str(root), split=split, download=False, **extra)
    if dataset == "CelebA":
        return cls(str(root), split=split, target_type=[], download=False)
    if dataset == "LSUN":
        # LSUNClass caches its database's keys in "_cache_<root's letters>" in the working directory and reads
        # that file back on later runs, stale or not: build it in a fresh, empty directory that is then removed
        absolute = root.resolve()
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            return cls(str(absolute), classes=[f"{c}_{split}" for c in _lsun_categories(absolute, split)])
    return cls(str(root), loader=str)  # ImageFolder


def _classes(dataset: str, opened: list) -> list[str]:
    if dataset == "LSUN":
        return list(dict.fromkeys(c.rsplit("_", 1)[0] for _, ds in opened for c in ds.classes))
    return list(getattr(opened[0][1], "classes", None) or [])


def _label(target, classes: list[str], where: str) -> str:
    if target is None or isinstance(target, (list, tuple)) or int(target) < 0:  # no class (STL10's unlabeled: -1)
        return UNLABELLED
    if not classes:
        return str(int(target))
    if int(target) >= len(classes):
        raise SourceError(f"{where}: label {int(target)} but only {len(classes)} class names")
    return classes[int(target)]


def _records(dataset: str, root: Path, opened: list, classes: list[str], fixed: bool) -> Iterator[Record]:
    for split, ds in opened:
        prefix = f"{split}/" if split else ""
        ours = ("val" if split in VAL_SPLITS else "train") if fixed else None
        if dataset == "LSUN":
            yield from _lsun_records(ds, prefix, ours)
            continue
        for i in range(len(ds)):
            if dataset == "CelebA":  # its own __getitem__ opens the image: hand `decode` the file instead
                name = ds.filename[i]
                path = os.path.join(ds.root, ds.base_folder, "img_align_celeba", name)
                yield Record(name=f"{prefix}{name}", label=UNLABELLED, path=path, split=ours)
                continue
            item, target = ds[i]
            label = _label(target, classes, f"{dataset} {split or ''} item {i}".replace("  ", " "))
            if isinstance(item, str):  # a file (loader=str): `decode` reads it
                rel = Path(item).relative_to(root) if Path(item).is_relative_to(root) else Path(Path(item).name)
                name = rel.name if dataset == "Flowers102" else rel.as_posix()
                yield Record(name=f"{prefix}{name}", label=label, path=item, split=ours)
            else:
                pixels = np.asarray(item, dtype=np.uint8)
                yield Record(name=f"{prefix}{i:05d}", label=label, data=pixels.tobytes(), array=pixels, split=ours)


def _lsun_records(ds, prefix: str, ours: str | None) -> Iterator[Record]:
    """LSUN's images as the database stores them (WebP or JPEG bytes), named by category and key."""
    for category, db in zip(ds.classes, ds.dbs, strict=True):
        label = category.rsplit("_", 1)[0]
        with db.env.begin(write=False) as txn:
            for key in db.keys:
                name = f"{prefix}{label}/{key.decode('ascii', 'backslashreplace')}"
                yield Record(name=name, label=label, data=bytes(txn.get(key)), split=ours)
