import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.prepare import DataError, prepare, split_of
from pipeline.dataset import load_split


def png(color: int, size=(12, 10), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root, per_class=6):
    for cls, base in (("cat", 40), ("dog", 160)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i:02d}.png").write_bytes(png(base + i))
    return root


def folder_cfg(path, **kw) -> DataConfig:
    return DataConfig(source="folder", path=str(path), image_size=8, val_fraction=0.3, **kw)


def test_digits_prepare_writes_uniform_arrays_manifest_and_stats(tmp_path):
    res = prepare(DataConfig(image_size=16), tmp_path / "prepared", tmp_path / "report.json")
    train, val = load_split(tmp_path / "prepared", "train"), load_split(tmp_path / "prepared", "val")
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (1, 16, 16)
    assert len(train.labels) + len(val.labels) == 1797  # every real sklearn digit, none dropped
    assert train.classes == [str(i) for i in range(10)]
    assert isinstance(train.images, np.memmap)  # readable without loading into RAM
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert len(manifest["files"]) == 1797
    assert all(len(f["sha256"]) == 64 and f["split"] in ("train", "val") for f in manifest["files"])
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    assert stats["splits"]["train"]["count"] == res.counts["train"] == len(train.labels)
    assert sum(stats["splits"]["val"]["per_class"].values()) == len(val.labels)
    assert stats["original_sizes"] == {"8x8": 1797}
    assert 0.1 < res.counts["val"] / 1797 < 0.3  # val_fraction 0.2, hash-based


def test_split_is_deterministic_and_stable_when_the_dataset_grows(tmp_path):
    src = make_folder(tmp_path / "src")
    prepare(folder_cfg(src), tmp_path / "a", tmp_path / "ra.json")
    for i in range(20):
        (src / "cat" / f"new{i}.png").write_bytes(png(100 + i))
    prepare(folder_cfg(src), tmp_path / "b", tmp_path / "rb.json")
    before = {f["name"]: f["split"] for f in json.loads((tmp_path / "a/manifest.json").read_text())["files"]}
    after = {f["name"]: f["split"] for f in json.loads((tmp_path / "b/manifest.json").read_text())["files"]}
    assert all(after[name] == split for name, split in before.items())
    assert split_of("0" * 64, 0.2) == "val" and split_of("f" * 64, 0.2) == "train"


def test_folder_classes_come_from_subfolders(tmp_path):
    src = make_folder(tmp_path / "src")
    prepare(folder_cfg(src), tmp_path / "out", tmp_path / "r.json")
    train = load_split(tmp_path / "out", "train")
    val = load_split(tmp_path / "out", "val")
    assert train.classes == ["cat", "dog"]
    labels = np.concatenate([train.labels, val.labels])
    assert sorted(np.bincount(labels).tolist()) == [6, 6]


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archives_give_the_same_dataset_as_the_folder(tmp_path, kind):
    src = make_folder(tmp_path / "src")
    archive = tmp_path / f"data.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted(src.rglob("*.png")):
                zf.write(f, f.relative_to(src).as_posix())
    else:
        with tarfile.open(archive, "w:gz" if kind == "tar.gz" else "w") as tf:
            for f in sorted(src.rglob("*.png")):
                tf.add(f, f.relative_to(src).as_posix())
    prepare(folder_cfg(src), tmp_path / "from_dir", tmp_path / "r1.json")
    prepare(folder_cfg(archive), tmp_path / "from_archive", tmp_path / "r2.json")
    for split in ("train", "val"):
        a, b = load_split(tmp_path / "from_dir", split), load_split(tmp_path / "from_archive", split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def add_bad_files(src):
    (src / "cat" / "empty.png").write_bytes(b"")
    (src / "cat" / "notes.png").write_bytes(b"this is a text file, not a picture")
    (src / "dog" / "truncated.png").write_bytes(png(200, size=(64, 64))[:60])


def test_fail_mode_names_every_bad_file_and_writes_nothing(tmp_path):
    src = make_folder(tmp_path / "src")
    add_bad_files(src)
    out = tmp_path / "prepared"
    with pytest.raises(DataError) as err:
        prepare(folder_cfg(src), out, tmp_path / "report.json")
    msg = str(err.value)
    assert "cat/empty.png: empty file (0 bytes)" in msg
    assert "cat/notes.png: not an image" in msg
    assert "dog/truncated.png: cannot be decoded" in msg
    assert "3 of 15" in msg
    assert not out.exists() and not (tmp_path / "report.json").exists()
    assert not list(tmp_path.glob(".prepared*"))  # no temporary left behind


def test_fail_mode_keeps_a_previous_good_dataset_intact(tmp_path):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "prepared"
    prepare(folder_cfg(src), out, tmp_path / "report.json")
    before = (out / "manifest.json").read_bytes()
    add_bad_files(src)
    with pytest.raises(DataError):
        prepare(folder_cfg(src), out, tmp_path / "report.json")
    assert (out / "manifest.json").read_bytes() == before


def test_skip_mode_leaves_bad_files_out_and_reports_each(tmp_path):
    src = make_folder(tmp_path / "src")
    add_bad_files(src)
    res = prepare(folder_cfg(src, on_error="skip"), tmp_path / "out", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert {s["file"] for s in report["skipped"]} == {"cat/empty.png", "cat/notes.png", "dog/truncated.png"}
    assert report["files_seen"] == 15 and report["files_used"] == 12
    assert sum(res.counts.values()) == 12


def test_decompression_bomb_guard_refuses_oversized_images(tmp_path):
    src = make_folder(tmp_path / "src")
    (src / "dog" / "huge.png").write_bytes(png(9, size=(400, 400)))
    with pytest.raises(DataError, match=r"dog/huge.png: more than data.max_pixels=50000"):
        prepare(folder_cfg(src, max_pixels=50_000), tmp_path / "out", tmp_path / "r.json")


def test_zip_member_escaping_the_archive_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/ok.png", png(10))
        zf.writestr("../../etc/evil.png", png(20))
    with pytest.raises(DataError, match=r"escapes the archive"):
        prepare(folder_cfg(archive), tmp_path / "out", tmp_path / "r.json")


def test_missing_source_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(folder_cfg(tmp_path / "nowhere"), tmp_path / "out", tmp_path / "r.json")


def test_colour_modes_are_converted_by_the_documented_rules(tmp_path):
    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(src / "transparent.png")  # alpha 0 -> black
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(src / "cmyk.jpg")  # no ink -> white
    Image.new("I;16", (8, 8), 32768).save(src / "deep.png")  # 16-bit: scaled by 255 / 65535
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 200, 30] * 256)
    palette.save(src / "palette.png")
    cfg = DataConfig(source="folder", path=str(tmp_path / "src"), image_size=8, channels=3, val_fraction=0.5)
    prepare(cfg, tmp_path / "out", tmp_path / "r.json")
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    pixels = {}
    for split in ("train", "val"):
        s = load_split(tmp_path / "out", split)
        names = [f["name"] for f in manifest["files"] if f["split"] == split]
        pixels.update({n.split("/")[-1]: s.images[i] for i, n in enumerate(names)})
    assert pixels["transparent.png"].max() == 0
    assert pixels["cmyk.jpg"].min() >= 250
    assert pixels["deep.png"].min() == pixels["deep.png"].max() == 127
    assert pixels["palette.png"][:, 0, 0].tolist() == [10, 200, 30]
    assert all(p.shape == (3, 8, 8) for p in pixels.values())


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    import gzip
    import struct

    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_load_with_their_labels_and_class_names(tmp_path, compress):
    rng = np.random.default_rng(0)
    gz = ".gz" if compress else ""
    train, test = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    write_idx(tmp_path / f"train-images-idx3-ubyte{gz}", train, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{gz}", np.arange(30) % 3, compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{gz}", test, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{gz}", np.full(10, 2), compress)
    cfg = DataConfig(source="idx", path=str(tmp_path), image_size=32, class_names=["shirt", "shoe", "bag"])
    res = prepare(cfg, tmp_path / "out", tmp_path / "r.json")
    assert sum(res.counts.values()) == 40
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["classes"] == ["shirt", "shoe", "bag"]  # the given order, not alphabetical
    by_name = {f["name"]: f["label"] for f in manifest["files"]}
    assert by_name["train/00004"] == "shoe" and by_name["t10k/00009"] == "bag"
    split = load_split(tmp_path / "out", "train")
    assert split.images.shape[1:] == (1, 32, 32)


def test_idx_errors_name_the_file(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4)), False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), False)
    cfg = DataConfig(source="idx", path=str(tmp_path), image_size=8)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: 5 images but 4 labels"):
        prepare(cfg, tmp_path / "out", tmp_path / "r.json")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01garbage")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: not an IDX file"):
        prepare(cfg, tmp_path / "out", tmp_path / "r.json")
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no matching labels file"):
        prepare(cfg, tmp_path / "out", tmp_path / "r.json")
    assert not (tmp_path / "out").exists()


def test_training_subset_is_stable_and_grows_as_a_superset(tmp_path):
    from pipeline.dataset import stable_subset

    prepare(DataConfig(image_size=8), tmp_path / "p", tmp_path / "r.json")
    full = load_split(tmp_path / "p", "train")
    small, large = (stable_subset(tmp_path / "p", "train", full, f) for f in (0.1, 0.3))
    assert 0.05 < len(small.labels) / len(full.labels) < 0.15
    rows = lambda s: {r.tobytes() for r in np.asarray(s.images)}  # noqa: E731
    assert rows(small) <= rows(large) <= rows(full)
    assert stable_subset(tmp_path / "p", "train", full, 1.0) is full


def test_the_data_report_shows_a_labelled_row_of_images_per_class(tmp_path):
    from pipeline.data.report import class_thumbnails
    from pipeline.grid import figure_png

    prepare(folder_cfg(make_folder(tmp_path / "src")), tmp_path / "prepared", tmp_path / "report.json")
    assert "\n![training images per class](report_thumbs.png)\n" in (tmp_path / "report.md").read_text()
    fig = class_thumbnails(tmp_path / "prepared", ["cat", "dog"], domains=False)
    assert (tmp_path / "report_thumbs.png").read_bytes() == figure_png(fig)  # what prepare wrote
    assert [ax.get_ylabel() for ax in fig.axes] == ["cat", "dog"]
    for ax, colours in zip(fig.axes, (range(40, 46), range(160, 166)), strict=True):
        # every image of the class (the val split's too, the train split holding fewer than a row), no other
        assert set(np.unique(ax.images[0].get_array())) - {0} == set(colours)


def test_two_domain_data_gets_one_row_per_domain(tmp_path):
    from pipeline.data.report import class_thumbnails
    from pipeline.grid import make_grid

    cfg = DataConfig(source="glyphs", image_size=16, glyphs={"chars": ["ascii"]})
    prepare(cfg, tmp_path / "prepared", tmp_path / "report.json")
    fig = class_thumbnails(tmp_path / "prepared", ["A", "B"], domains=True)
    assert [ax.get_ylabel() for ax in fig.axes] == ["domain A", "domain B"]
    first_a = np.load(tmp_path / "prepared" / "train_A.npy")[:8]
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), make_grid(first_a, 8)[..., 0])
    assert (tmp_path / "report_thumbs.png").is_file()


def test_the_thumbnails_are_a_prepare_output_beside_the_report():
    import yaml
    from conftest import REPO

    from pipeline import layout
    from pipeline.data.report import thumbs_path

    assert thumbs_path(layout.DATA_REPORT) == layout.DATA_REPORT_THUMBS
    outs = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["prepare"]["outs"]
    declared = [out if isinstance(out, str) else next(iter(out)) for out in outs]
    assert layout.DATA_REPORT_THUMBS.as_posix() in declared and layout.DATA_REPORT.as_posix() in declared


def test_a_failed_prepare_leaves_the_thumbnails_and_everything_else_as_they_were(tmp_path):
    src, out, report = make_folder(tmp_path / "src"), tmp_path / "prepared", tmp_path / "report.json"
    with pytest.raises(DataError):  # nothing at all from a first run that fails
        prepare(folder_cfg(src, class_names=["cat", "dog", "owl"]), out, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    prepare(folder_cfg(src), out, report)
    thumbs = tmp_path / "report_thumbs.png"
    kept = {p: p.read_bytes() for p in (thumbs, report, report.with_suffix(".md"), out / "manifest.json")}
    add_bad_files(src)
    with pytest.raises(DataError):  # bad files: refused before anything is replaced
        prepare(folder_cfg(src), out, report)
    assert {p: p.read_bytes() for p in kept} == kept
    # the new thumbnails cannot be put in place (a folder is in the way): the four outputs are
    # renamed together, so the dataset and both reports stay as they were too
    thumbs.unlink()
    thumbs.mkdir()
    with pytest.raises(IsADirectoryError):
        prepare(folder_cfg(src, on_error="skip"), out, report)
    assert {p: p.read_bytes() for p in kept if p != thumbs} == {p: b for p, b in kept.items() if p != thumbs}
    assert thumbs.is_dir() and not list(thumbs.iterdir()) and not list(tmp_path.glob(".*.tmp"))


def test_colour_made_grey_and_a_small_validation_split_are_said_in_the_log_and_the_report(tmp_path, caplog):
    import logging

    src = tmp_path / "src"
    for cls, colour in (("red", (200, 30, 30)), ("grey", (90, 90, 90))):
        (src / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (10, 10), tuple(c + i for c in colour)).save(src / cls / f"{i}.png")  # grey as RGB too
    with caplog.at_level(logging.WARNING, logger="pipeline.data.prepare"):
        prepare(folder_cfg(src), tmp_path / "grey", tmp_path / "grey.json")
    report = json.loads((tmp_path / "grey.json").read_text())
    val = report["counts"]["val"]
    assert report["warnings"] == [
        "5 of 10 images are in colour and were made grey (data.channels: 1); set data.channels: 3 to keep their colour",
        f"the validation split has {val} images: FID, KID, precision and recall on fewer than 200 are mostly noise; "
        "raise data.val_fraction (now 0.3) or add images",
    ]
    assert [r.getMessage() for r in caplog.records] == report["warnings"]
    assert "- **warning**: 5 of 10 images are in colour" in (tmp_path / "grey.md").read_text()
    # in colour, nothing is made grey; only the split's size is said
    prepare(folder_cfg(src, channels=3), tmp_path / "rgb", tmp_path / "rgb.json")
    assert [w.split(":")[0] for w in json.loads((tmp_path / "rgb.json").read_text())["warnings"]] == [
        f"the validation split has {val} images"]  # fmt: skip


def test_a_dataset_with_nothing_to_warn_about_has_no_warnings_in_its_report(tmp_path):
    prepare(DataConfig(image_size=8), tmp_path / "prepared", tmp_path / "report.json")  # digits: 1,797 grey images
    assert "warnings" not in json.loads((tmp_path / "report.json").read_text())
