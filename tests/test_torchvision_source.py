"""data.source torchvision: each dataset's on-disk format, written here by the test itself, read through
torchvision's own class (download=False) and prepared like any other source.

CIFAR, SVHN, STL10, CelebA and Flowers102 compare their files' md5 with the official release's, which
files written here never match: the `own_files` fixture turns that check into "the file exists", in
these tests only; `test_the_md5_check_stays_on_for_real_downloads` shows users keep it."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from conftest import REPO
from PIL import Image

from pipeline.config import TORCHVISION_DATASETS, DataConfig, parse_params
from pipeline.data.prepare import DataError, prepare
from pipeline.dataset import load_split
from pipeline.params_yaml import ConfigError

tvd = pytest.importorskip("torchvision.datasets")

MD5_CHECKED = ("cifar", "svhn", "stl10", "celeba", "flowers102")  # the torchvision modules that check md5s


@pytest.fixture
def own_files(monkeypatch):
    """The md5 check of CIFAR, SVHN, STL10, CelebA and Flowers102 becomes "the file exists", for one test:
    `check_integrity` (torchvision.datasets.utils) is replaced where each of those modules looks it up.
    Nothing outside the test changes: users' real downloads are still checked against the official md5s."""

    def exists(fpath, md5=None) -> bool:
        return os.path.isfile(fpath)

    for name in MD5_CHECKED:
        monkeypatch.setattr(f"torchvision.datasets.{name}.check_integrity", exists)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Nothing is ever downloaded: any attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    for target in ("download_url", "download_and_extract_archive", "download_file_from_google_drive"):
        monkeypatch.setattr(f"torchvision.datasets.utils.{target}", refuse)
    for name in ("cifar", "mnist", "svhn", "stl10", "celeba", "flowers102"):
        module = sys.modules[f"torchvision.datasets.{name}"]
        for target in ("download_url", "download_and_extract_archive", "download_file_from_google_drive"):
            if hasattr(module, target):
                monkeypatch.setattr(module, target, refuse)


def noise(seed: int, *shape: int) -> np.ndarray:
    """Distinct random pixels (identical images would be dropped as duplicates)."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def prepared(cfg: DataConfig, tmp_path) -> tuple[dict, object, object]:
    prepare(cfg, tmp_path / "prepared", tmp_path / "report.json")
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    return manifest, load_split(tmp_path / "prepared", "train"), load_split(tmp_path / "prepared", "val")


def tv(dataset: str, root, **kw) -> DataConfig:
    return DataConfig(source="torchvision", dataset=dataset, path=str(root), **{"image_size": 32, **kw})


def by_split(manifest: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in manifest["files"]:
        out.setdefault(f["split"], []).append(f["name"])
    return out


# ---- writers: each dataset's on-disk format, as torchvision reads it ------------------------------------------


def write_cifar(root, hundred: bool, train_labels: list[int], test_labels: list[int]) -> np.ndarray:
    """cifar-10-batches-py/ (five data batches, a test batch, batches.meta) or cifar-100-python/ (train,
    test, meta): pickled dicts of uint8 rows (3x32x32, channel-major) and labels. Returns every image, HWC."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    n = len(train_labels) + len(test_labels)
    images = noise(1, n, 3, 32, 32)

    def dump(name, rows, labels):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rows.reshape(len(rows), -1), key: list(labels)}, fh)

    train, test = images[: len(train_labels)], images[len(train_labels) :]
    if hundred:
        dump("train", train, train_labels)
        names = {"fine_label_names": [f"fine{i:02d}" for i in range(100)]}
        (folder / "meta").write_bytes(pickle.dumps(names))
    else:
        for b, chunk in enumerate(np.array_split(np.arange(len(train_labels)), 5), 1):
            dump(f"data_batch_{b}", train[chunk], [train_labels[i] for i in chunk])
        names = {"label_names": ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
        (folder / "batches.meta").write_bytes(pickle.dumps(names))
    dump("test_batch" if not hundred else "test", test, test_labels)
    return images.transpose(0, 2, 3, 1)


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, dataset: str, train_labels, test_labels) -> None:
    """<root>/<MNIST|FashionMNIST>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed idx)."""
    raw = root / dataset / "raw"
    raw.mkdir(parents=True)
    for stem, labels, seed in (("train", train_labels, 2), ("t10k", test_labels, 3)):
        write_idx(raw / f"{stem}-images-idx3-ubyte", noise(seed, len(labels), 28, 28))
        write_idx(raw / f"{stem}-labels-idx1-ubyte", np.array(labels))


def write_svhn(root, splits: dict[str, list[int]]) -> None:
    """<split>_32x32.mat: X [32, 32, 3, N] uint8, y [N, 1] with digit 0 stored as 10 (as the original)."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, (split, digits) in enumerate(splits.items()):
        y = np.array([[10 if d == 0 else d] for d in digits], dtype=np.uint8)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": noise(10 + seed, 32, 32, 3, len(digits)), "y": y})


STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10(root, train_labels, test_labels, unlabeled: int) -> None:
    """stl10_binary/: {train,test,unlabeled}_X.bin (N x 3 x 96 x 96 uint8, column-major), {train,test}_y.bin
    (uint8, 1-based) and class_names.txt."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for seed, (stem, labels) in enumerate((("train", train_labels), ("test", test_labels))):
        (folder / f"{stem}_X.bin").write_bytes(noise(20 + seed, len(labels), 3, 96, 96).tobytes())
        (folder / f"{stem}_y.bin").write_bytes((np.array(labels, dtype=np.uint8) + 1).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(noise(29, unlabeled, 3, 96, 96).tobytes())
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")


def write_celeba(root, partition: list[int]) -> list[str]:
    """celeba/: img_align_celeba/<id>.jpg and the five text files torchvision reads (partition, identity,
    bounding boxes, landmarks, attributes: the last three with a count line and a header line)."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, len(partition) + 1)]
    for i, name in enumerate(names):
        (folder / "img_align_celeba" / name).write_bytes(image_bytes(noise(40 + i, 24, 20, 3), "JPEG"))
    rows = lambda values: "".join(f"{n} {' '.join(map(str, v))}\n" for n, v in zip(names, values, strict=True))  # noqa: E731
    n = len(names)
    (folder / "list_eval_partition.txt").write_text(rows([[p] for p in partition]))
    (folder / "identity_CelebA.txt").write_text(rows([[i % 3 + 1] for i in range(n)]))
    (folder / "list_bbox_celeba.txt").write_text(f"{n}\nimage_id x_1 y_1 width height\n" + rows([[1, 2, 10, 12]] * n))
    marks = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y"
    (folder / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{marks}\n" + rows([[5, 6, 12, 6, 9, 10]] * n))
    (folder / "list_attr_celeba.txt").write_text(f"{n}\nSmiling Young\n" + rows([[1, -1]] * n))
    return names


def write_flowers(root, labels: list[int], splits: dict[str, list[int]]) -> None:
    """flowers-102/: jpg/image_<id>.jpg, imagelabels.mat (1-based labels by image id) and setid.mat
    (trnid, valid, tstid: 1-based image ids)."""
    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for i in range(1, len(labels) + 1):
        (folder / "jpg" / f"image_{i:05d}.jpg").write_bytes(image_bytes(noise(100 + i, 20, 20, 3), "JPEG"))
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": np.array([labels]) + 1})
    keys = {"train": "trnid", "val": "valid", "test": "tstid"}
    scipy.io.savemat(folder / "setid.mat", {keys[s]: np.array([ids]) for s, ids in splits.items()})


def write_lsun(root, dbs: dict[str, int]) -> None:
    """<category>_<split>_lmdb/: an LMDB database of encoded images (WebP, as LSUN's), keyed by image id."""
    import lmdb

    root.mkdir(parents=True, exist_ok=True)
    for seed, (db, n) in enumerate(dbs.items()):
        env = lmdb.open(str(root / f"{db}_lmdb"), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(f"{seed:02d}{i:038x}".encode(), image_bytes(noise(200 + 10 * seed + i, 40, 48, 3), "WEBP"))
        env.close()


def write_image_folder(root, classes: dict[str, int]) -> None:
    for seed, (cls, n) in enumerate(classes.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i:02d}.png").write_bytes(image_bytes(noise(300 + 10 * seed + i, 20, 20)))


# ---- each dataset, read and prepared ---------------------------------------------------------------------------


def test_cifar10_python_batches(tmp_path, own_files):
    train_labels, test_labels = [i % 10 for i in range(15)], [3, 1, 4, 1]
    images = write_cifar(tmp_path / "root", False, train_labels, test_labels)
    manifest, train, val = prepared(tv("CIFAR10", tmp_path / "root", channels=3), tmp_path)
    assert manifest["source"] == "torchvision" and manifest["dataset"] == "CIFAR10"
    assert manifest["splits"] == ["train", "test"]
    assert manifest["classes"] == ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    # the official split decides: train -> train, test -> val, and the names say which it was
    assert by_split(manifest) == {
        "train": [f"train/{i:05d}" for i in range(15)],
        "val": [f"test/{i:05d}" for i in range(4)],
    }
    assert train.labels.tolist() == train_labels and val.labels.tolist() == test_labels
    assert np.array_equal(train.images, images[:15].transpose(0, 3, 1, 2))  # 32 px RGB: the pixels unchanged
    assert np.array_equal(val.images, images[15:].transpose(0, 3, 1, 2))


def test_cifar100_fine_labels(tmp_path, own_files):
    write_cifar(tmp_path / "root", True, list(range(100)), [7, 99, 0])
    manifest, train, val = prepared(tv("CIFAR100", tmp_path / "root", channels=3), tmp_path)
    assert manifest["classes"] == [f"fine{i:02d}" for i in range(100)]
    assert len(train.labels) == 100 and val.labels.tolist() == [7, 99, 0]
    assert {f["name"]: f["label"] for f in manifest["files"]}["test/00001"] == "fine99"


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST"])
def test_mnist_family_idx_files_in_the_raw_folder(tmp_path, dataset):
    write_mnist(tmp_path / "root", dataset, list(range(10)) * 2, [9, 0, 5])
    manifest, train, val = prepared(tv(dataset, tmp_path / "root", image_size=16), tmp_path)
    classes = getattr(tvd, dataset).classes
    assert manifest["classes"] == classes  # torchvision's names, in its label order
    assert train.labels.tolist() == list(range(10)) * 2 and val.labels.tolist() == [9, 0, 5]
    assert train.images.shape == (20, 1, 16, 16)
    assert by_split(manifest)["val"] == ["test/00000", "test/00001", "test/00002"]


def test_mnist_class_names_rename_the_labels(tmp_path):
    write_mnist(tmp_path / "root", "MNIST", list(range(10)), [1, 2])
    names = [f"digit {i}" for i in range(10)]
    manifest, _, _ = prepared(tv("MNIST", tmp_path / "root", class_names=names), tmp_path)
    assert manifest["classes"] == names and [f["label"] for f in manifest["files"]][-2:] == ["digit 1", "digit 2"]


def test_svhn_mat_files(tmp_path, own_files):
    write_svhn(tmp_path / "root", {"train": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0], "test": [0, 7], "extra": [5, 5, 6]})
    manifest, train, val = prepared(tv("SVHN", tmp_path / "root", channels=3), tmp_path)
    assert manifest["classes"] == [str(d) for d in range(10)]  # SVHN names no classes: the digits, 10 read as 0
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0] and val.labels.tolist() == [0, 7]
    # train and extra only: no official val split read, so the content hash splits them
    manifest, train, val = prepared(tv("SVHN", tmp_path / "root", split=["train", "extra"]), tmp_path / "b")
    names = [f["name"] for f in manifest["files"]]
    assert (
        len(train.labels) + len(val.labels) == 14
        and "extra/00002" in names
        and manifest["splits"] == ["train", "extra"]
    )
    assert len(val.labels) >= 1


def test_stl10_binary_files(tmp_path, own_files):
    write_stl10(tmp_path / "root", list(range(10)), [4, 2], unlabeled=3)
    manifest, train, val = prepared(tv("STL10", tmp_path / "root", channels=3), tmp_path)
    assert manifest["classes"] == STL10_CLASSES
    assert train.labels.tolist() == list(range(10)) and val.labels.tolist() == [4, 2]
    assert train.images.shape == (10, 3, 32, 32)  # 96 px resized
    manifest, train, val = prepared(
        tv("STL10", tmp_path / "root", split=["train", "unlabeled", "test"]), tmp_path / "b"
    )
    assert manifest["classes"] == [*STL10_CLASSES, "unlabelled"]  # unlabeled images have no class
    assert sum(f["name"].startswith("unlabeled/") for f in manifest["files"]) == 3 and len(train.labels) == 13


def test_celeba_aligned_images_and_their_lists(tmp_path, own_files):
    names = write_celeba(tmp_path / "root", [0, 0, 0, 1, 2, 0, 2, 1])  # torchvision needs 2+ images per split
    manifest, train, _ = prepared(tv("CelebA", tmp_path / "root", channels=3, image_size=16), tmp_path)
    assert manifest["classes"] == ["unlabelled"] and manifest["splits"] == ["train", "valid", "test"]
    assert by_split(manifest) == {"train": [f"train/{n}" for n in (names[0], names[1], names[2], names[5])],
                                  "val": [f"valid/{names[3]}", f"valid/{names[7]}", f"test/{names[4]}",
                                          f"test/{names[6]}"]}  # fmt: skip
    assert train.images.shape == (4, 3, 16, 16)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["torchvision"] == {"dataset": "CelebA", "splits": ["train", "valid", "test"]}


def test_flowers102_jpegs_and_mat_files(tmp_path, own_files):
    labels = [*range(102), 5, 6, 7, 8]  # every class once in train
    write_flowers(tmp_path / "root", labels, {"train": list(range(1, 103)), "val": [103, 104], "test": [105, 106]})
    manifest, train, val = prepared(tv("Flowers102", tmp_path / "root", channels=3, image_size=16), tmp_path)
    assert manifest["classes"] == tvd.Flowers102.classes and len(manifest["classes"]) == 102
    assert len(train.labels) == 102 and val.labels.tolist() == [5, 6, 7, 8]
    assert by_split(manifest)["val"] == ["val/image_00103.jpg", "val/image_00104.jpg", "test/image_00105.jpg",
                                         "test/image_00106.jpg"]  # fmt: skip


def test_lsun_lmdb_categories_without_a_cache_file_left_behind(tmp_path, monkeypatch):
    pytest.importorskip("lmdb")
    write_lsun(tmp_path / "root", {"bedroom_train": 5, "tower_train": 4, "bedroom_val": 2, "tower_val": 1})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # LSUNClass writes a key cache into the working directory: none may appear here
    manifest, train, val = prepared(tv("LSUN", tmp_path / "root", channels=3), tmp_path)
    assert manifest["classes"] == ["bedroom", "tower"] and manifest["splits"] == ["train"]
    assert len(train.labels) + len(val.labels) == 9 and len(val.labels) >= 1  # train only: split by content hash
    assert all(f["name"].startswith(("train/bedroom/", "train/tower/")) for f in manifest["files"])
    manifest, train, val = prepared(tv("LSUN", tmp_path / "root", split=["train", "val"]), tmp_path / "b")
    assert len(train.labels) == 9 and sorted(val.labels.tolist()) == [0, 0, 1]
    assert list(work.iterdir()) == [] and not list(tmp_path.glob("_cache_*"))


def test_image_folder(tmp_path):
    write_image_folder(tmp_path / "root", {"zebra": 3, "ant": 4})
    manifest, train, val = prepared(tv("ImageFolder", tmp_path / "root", image_size=16), tmp_path)
    assert manifest["classes"] == ["ant", "zebra"] and manifest["splits"] == []
    assert {f["name"] for f in manifest["files"]} == {f"ant/{i:02d}.png" for i in range(4)} | {
        f"zebra/{i:02d}.png" for i in range(3)
    }
    assert len(train.labels) + len(val.labels) == 7


# ---- refusals ----------------------------------------------------------------------------------------------------

EXPECTS = {
    "CIFAR10": "cifar-10-batches-py/data_batch_1",
    "CIFAR100": "cifar-100-python/train",
    "MNIST": "MNIST/raw/train-images-idx3-ubyte",
    "FashionMNIST": "FashionMNIST/raw/t10k-labels-idx1-ubyte",
    "SVHN": "train_32x32.mat, test_32x32.mat",
    "STL10": "stl10_binary/unlabeled_X.bin",
    "CelebA": "celeba/img_align_celeba/, celeba/list_attr_celeba.txt",
    "Flowers102": "flowers-102/jpg/, flowers-102/imagelabels.mat, flowers-102/setid.mat",
    "LSUN": "<category>_train_lmdb/ (<category>: bedroom, bridge",
    "ImageFolder": "<class>/<image> sub-folders",
}


@pytest.mark.parametrize("dataset", list(TORCHVISION_DATASETS))
def test_missing_files_are_one_line_naming_the_root_the_dataset_and_the_files(tmp_path, dataset):
    root = tmp_path / "empty"
    root.mkdir()
    cfg = tv(dataset, root if dataset != "ImageFolder" else tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path / "prepared", tmp_path / "report.json")
    message = str(err.value)
    assert "\n" not in message and f"torchvision's {dataset} expects" in message and EXPECTS[dataset] in message
    assert repr(cfg.path) in message and "never downloads" in message
    assert list(root.iterdir()) == [] and not (tmp_path / "prepared").exists()  # nothing fetched, nothing written


def test_one_missing_file_is_named(tmp_path, own_files):
    write_cifar(tmp_path / "root", False, list(range(10)), [1])
    (tmp_path / "root/cifar-10-batches-py/data_batch_3").unlink()
    with pytest.raises(DataError, match=r"lacks cifar-10-batches-py/data_batch_3: torchvision's CIFAR10 expects"):
        prepare(tv("CIFAR10", tmp_path / "root"), tmp_path / "prepared", tmp_path / "report.json")


@pytest.mark.parametrize("dataset", ["CIFAR10", "SVHN", "STL10", "CelebA", "Flowers102"])
def test_the_md5_check_stays_on_for_real_downloads(tmp_path, dataset):
    """Without the tests' bypass, files that are not the official release's are refused, in one line."""
    root = tmp_path / "root"
    {
        "CIFAR10": lambda: write_cifar(root, False, list(range(10)), [1]),
        "SVHN": lambda: write_svhn(root, {"train": list(range(10)), "test": [1]}),
        "STL10": lambda: write_stl10(root, list(range(10)), [1], unlabeled=1),
        "CelebA": lambda: write_celeba(root, [0, 0, 1]),
        "Flowers102": lambda: write_flowers(root, [0, 1, 2], {"train": [1, 2], "val": [3, 3], "test": [3, 3]}),
    }[dataset]()
    with pytest.raises(DataError) as err:
        prepare(tv(dataset, root), tmp_path / "prepared", tmp_path / "report.json")
    message = str(err.value)
    assert "\n" not in message and f"torchvision's {dataset} refuses its files" in message and "md5" in message


def test_config_refuses_an_unknown_dataset_in_one_line_listing_the_known_ones():
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"source": "torchvision", "dataset": "ImageNet", "path": "x"}})
    line = str(err.value).splitlines()[1]
    assert line.startswith("  data.dataset: Input should be 'CIFAR10'") and all(d in line for d in TORCHVISION_DATASETS)
    with pytest.raises(ConfigError, match=r"data.split 'valid' is not a split of SVHN \(its splits are train, test"):
        parse_params({"data": {"source": "torchvision", "dataset": "SVHN", "path": "x", "split": ["valid"]}})
    with pytest.raises(ConfigError, match=r"source 'torchvision' needs data.dataset: CIFAR10, CIFAR100"):
        parse_params({"data": {"source": "torchvision", "path": "x"}})
    with pytest.raises(ConfigError, match=r"data.dataset applies to source 'torchvision' only"):
        parse_params({"data": {"source": "folder", "path": "x", "dataset": "MNIST"}})


def test_torchvision_is_imported_only_when_the_source_is_used():
    code = "import pipeline.data.prepare, pipeline.config, sys; print('torchvision' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr


# ---- end to end: the prepare stage ----------------------------------------------------------------------------


def test_the_prepare_stage_reads_a_torchvision_dataset_and_refuses_a_missing_one_in_one_line(tmp_path):
    write_mnist(tmp_path / "data/raw", "MNIST", list(range(10)) * 2, [3, 4, 5])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO), "GANPIPE_THREADS": "1"}

    def stage(data: dict) -> subprocess.CompletedProcess:
        (tmp_path / "params.yaml").write_text(json.dumps({"data": {"image_size": 16, **data}}))
        return subprocess.run([sys.executable, "-m", "flows.prepare"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    res = stage({"source": "torchvision", "dataset": "MNIST", "path": "data/raw"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "prepared {'train': 20, 'val': 3} images from 'torchvision'" in res.stdout
    manifest = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    assert manifest["dataset"] == "MNIST" and manifest["classes"] == tvd.MNIST.classes
    assert manifest["files"][-1] == {**manifest["files"][-1], "name": "test/00002", "label": "5 - five", "split": "val"}
    res = stage({"source": "torchvision", "dataset": "CIFAR10", "path": "data/raw"})
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr
    assert "'data/raw' lacks cifar-10-batches-py/data_batch_1" in errors[0] and "torchvision's CIFAR10" in errors[0]
