"""Every bad-input case of the prepare stage, built here, with its exact outcome in both
`on_error` modes; plus the two-domain layouts and the glyph source."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig, GlyphConfig
from pipeline.data.prepare import DataError, prepare
from pipeline.dataset import load_split


def png(color, size=(12, 10), mode="L", fmt="PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt, **save)
    return buf.getvalue()


def good_folder(root, per_class: int = 6):
    for cls, base in (("cat", 40), ("dog", 160)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i:02d}.png").write_bytes(png(base + i))
    return root


def cfg(path, **kw) -> DataConfig:
    base = {"source": "folder", "path": str(path), "image_size": 8, "val_fraction": 0.3, "workers": 1}
    return DataConfig(**{**base, **kw})


# name -> (builder(src, tmp) writing one bad file, its name in reports, expected reason)
def _zero(src, tmp):
    (src / "cat" / "zero.png").write_bytes(b"")


def _truncated(src, tmp):
    (src / "cat" / "cut.png").write_bytes(png(200, size=(64, 64))[:70])


def _not_image(src, tmp):
    (src / "cat" / "readme.jpg").write_bytes(b"%PDF-1.4 not a picture at all")


def _lab(src, tmp):
    (src / "cat" / "lab.tif").write_bytes(png((50, 0, 0), mode="LAB", fmt="TIFF"))


def _small(src, tmp):
    (src / "cat" / "tiny.png").write_bytes(png(9, size=(3, 12)))  # shorter side 3 < 8 / 2


def _bomb(src, tmp):
    (src / "cat" / "bomb.png").write_bytes(png(0, size=(300, 300)))  # > max_pixels=50,000 below


def _dangling(src, tmp):
    (src / "cat" / "gone.png").symlink_to("deleted.png")  # inside the source, target missing


def _escaping(src, tmp):
    (tmp / "secret.png").write_bytes(png(77))
    (src / "cat" / "link.png").symlink_to(tmp / "secret.png")


def _fifo(src, tmp):
    os.mkfifo(src / "cat" / "pipe.png")


BAD_CASES = {
    "zero-byte": (_zero, "cat/zero.png", "empty file (0 bytes)"),
    "truncated": (_truncated, "cat/cut.png", "cannot be decoded"),
    "not an image": (_not_image, "cat/readme.jpg", "not an image in a supported format"),
    "unsupported mode": (_lab, "cat/lab.tif", "unsupported image mode 'LAB'"),
    "too small": (_small, "cat/tiny.png", "3x12 is smaller than data.min_size=4 px"),
    "decompression bomb": (_bomb, "cat/bomb.png", "more than data.max_pixels=50000 pixels"),
    "unreadable": (_dangling, "cat/gone.png", "unreadable (No such file or directory)"),
    "symlink escaping": (_escaping, "cat/link.png", "points outside data.path; refused"),
    "not a regular file": (_fifo, "cat/pipe.png", "not a regular file"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_bad_file_fails_the_run_by_name_and_writes_nothing(tmp_path, case):
    build, name, reason = BAD_CASES[case]
    src = good_folder(tmp_path / "src")
    build(src, tmp_path)
    with pytest.raises(DataError) as err:
        prepare(cfg(src, max_pixels=50_000), tmp_path / "out", tmp_path / "report.json")
    assert f"{name}: " in str(err.value) and reason in str(err.value)
    assert "1 of 13 input files are unusable" in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_bad_file_is_skipped_and_reported_in_skip_mode(tmp_path, case):
    build, name, reason = BAD_CASES[case]
    src = good_folder(tmp_path / "src")
    build(src, tmp_path)
    res = prepare(cfg(src, max_pixels=50_000, on_error="skip"), tmp_path / "out", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(s["file"], s["kind"]) for s in report["skipped"]] == [(name, "bad")]
    assert reason in report["skipped"][0]["reason"]
    assert sum(res.counts.values()) == 12 and report["files_seen"] == 13
    assert name in (tmp_path / "report.md").read_text()  # the readable summary lists it too


def test_an_image_with_the_wrong_extension_is_decoded_by_content(tmp_path):
    src = good_folder(tmp_path / "src")
    (src / "cat" / "actually_png.jpg").write_bytes(png(90))
    res = prepare(cfg(src), tmp_path / "out", tmp_path / "r.json")
    assert sum(res.counts.values()) == 13


def test_exif_orientation_is_applied(tmp_path):
    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    img = Image.new("L", (16, 8), 255)
    img.paste(0, (0, 0, 8, 8))  # left half black as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge becomes the top
    img.save(src / "rotated.jpg", exif=exif, quality=100)
    for i in range(3):
        (src / f"plain{i}.png").write_bytes(png(128 + i, size=(8, 8)))
    prepare(cfg(tmp_path / "src", val_fraction=0.01), tmp_path / "out", tmp_path / "r.json")
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    pixels = {}
    for split in ("train", "val"):
        names = [f["name"] for f in manifest["files"] if f["split"] == split]
        pixels.update(zip(names, load_split(tmp_path / "out", split).images, strict=True))
    rotated = pixels["x/rotated.jpg"][0].astype(int)
    assert rotated[:3].mean() < 40 and rotated[5:].mean() > 215  # black on top, white below
    assert abs(rotated[:, :4].mean() - rotated[:, 4:].mean()) < 10  # not left/right any more


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_exact_duplicates_are_dropped_and_listed_in_both_modes(tmp_path, mode):
    src = good_folder(tmp_path / "src")
    Image.new("L", (12, 10), 41).save(src / "dog" / "copy.bmp")  # same pixels as cat/01.png, other format
    res = prepare(cfg(src, on_error=mode), tmp_path / "out", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped"] == [
        {"file": "dog/copy.bmp", "reason": "exact duplicate of cat/01.png (same decoded pixels); the first is kept",
         "kind": "duplicate"}
    ]  # fmt: skip
    assert sum(res.counts.values()) == 12


def test_empty_class_fails_or_is_left_out(tmp_path):
    src = good_folder(tmp_path / "src")
    (src / "bird").mkdir()
    with pytest.raises(DataError, match=r"bird/: class folder has no usable images"):
        prepare(cfg(src), tmp_path / "out", tmp_path / "r.json")
    prepare(cfg(src, on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["empty_classes"] == ["bird"]
    assert load_split(tmp_path / "out", "train").classes == ["cat", "dog"]


def test_a_class_whose_every_file_is_bad_is_empty_too(tmp_path):
    src = good_folder(tmp_path / "src")
    (src / "bird").mkdir()
    (src / "bird" / "broken.png").write_bytes(b"\x89PNG garbage")
    prepare(cfg(src, on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["empty_classes"] == ["bird"] and report["skipped"][0]["file"] == "bird/broken.png"


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_zip_slip_member_is_rejected_by_name(tmp_path, mode):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            zf.writestr(f"cat/{i}.png", png(10 + i))
        zf.writestr("../../etc/evil.png", png(20))
    if mode == "fail":
        with pytest.raises(DataError, match=r"\.\./\.\./etc/evil.png: archive member escapes the archive"):
            prepare(cfg(archive), tmp_path / "out", tmp_path / "r.json")
        return
    prepare(cfg(archive, on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["file"] for s in report["skipped"]] == ["../../etc/evil.png"]
    assert not (tmp_path.parent / "etc").exists()


def test_parallel_decoding_gives_the_same_dataset_as_one_process(tmp_path):
    src = good_folder(tmp_path / "src")
    for i in range(40):
        (src / "dog" / f"extra{i:02d}.png").write_bytes(png(i * 5 % 255, size=(10 + i % 7, 12)))
    prepare(cfg(src, workers=1), tmp_path / "one", tmp_path / "r1.json")
    prepare(cfg(src, workers=2), tmp_path / "two", tmp_path / "r2.json")
    for f in ("train_images.npy", "val_images.npy", "train_labels.npy", "manifest.json", "stats.json"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


# --- two-domain layouts -------------------------------------------------------------------


def test_unpaired_layout_uses_train_and_test_folders_as_splits(tmp_path):
    src = tmp_path / "horse2zebra"
    for folder, n, base in (("trainA", 5, 10), ("trainB", 7, 100), ("testA", 2, 60), ("testB", 3, 200)):
        (src / folder).mkdir(parents=True)
        for i in range(n):
            (src / folder / f"{i}.png").write_bytes(png(base + i))
    res = prepare(cfg(src, layout="unpaired"), tmp_path / "out", tmp_path / "r.json")
    assert res.counts == {"train_A": 5, "train_B": 7, "val_A": 2, "val_B": 3}
    assert np.load(tmp_path / "out" / "train_B.npy").shape == (7, 1, 8, 8)
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["domains"] == ["A", "B"] and manifest["paired"] is False


def test_paired_layout_matches_by_name_and_reports_unmatched_files(tmp_path):
    src = tmp_path / "facades"
    (src / "A").mkdir(parents=True)
    (src / "B").mkdir()
    for i in range(8):
        (src / "A" / f"{i:02d}.png").write_bytes(png(10 + i))
        (src / "B" / f"{i:02d}.jpg").write_bytes(png(200 - i, fmt="JPEG"))  # matched by name, not extension
    (src / "A" / "lonely.png").write_bytes(png(99))
    with pytest.raises(DataError, match=r"A/lonely.png: no matching file in B/ for 'lonely'"):
        prepare(cfg(src, layout="paired"), tmp_path / "out", tmp_path / "r.json")
    res = prepare(cfg(src, layout="paired", on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    assert res.counts["train_A"] == res.counts["train_B"] and res.counts["val_A"] == res.counts["val_B"]
    assert res.counts["train_A"] + res.counts["val_A"] == 8
    a, b = np.load(tmp_path / "out/train_A.npy"), np.load(tmp_path / "out/train_B.npy")
    np.testing.assert_allclose(a[:, 0, 0, 0].astype(int) - 10, 200 - b[:, 0, 0, 0].astype(int), atol=2)  # rows align


def test_a_bad_file_drops_its_whole_pair(tmp_path):
    src = tmp_path / "p"
    (src / "A").mkdir(parents=True)
    (src / "B").mkdir()
    for i in range(6):
        (src / "A" / f"{i}.png").write_bytes(png(10 + i))
        (src / "B" / f"{i}.png").write_bytes(png(100 + i))
    (src / "B" / "3.png").write_bytes(b"")
    prepare(cfg(src, layout="paired", on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    skipped = json.loads((tmp_path / "r.json").read_text())["skipped"]
    assert {(s["file"], s["kind"]) for s in skipped} == {("B/3.png", "bad"), ("A/3.png", "partner")}


# --- glyphs -------------------------------------------------------------------------------


def test_default_glyph_pair_renders_aligned_pairs_and_splits_by_character(tmp_path):
    data = DataConfig(source="glyphs", image_size=32, glyphs=GlyphConfig(chars=["ascii"]))
    res = prepare(data, tmp_path / "out", tmp_path / "r.json")
    assert res.counts["train_A"] + res.counts["val_A"] == 94  # every printable ASCII character, in both fonts
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    by_char = {}
    for f in manifest["files"]:
        by_char.setdefault(f["pair"], set()).add(f["split"])
    assert all(len(s) == 1 for s in by_char.values())  # a character is never in both splits
    a, b = np.load(tmp_path / "out/train_A.npy"), np.load(tmp_path / "out/train_B.npy")
    assert a.shape == b.shape and a.min() < 50 and a.max() == 255  # black ink on white
    assert not np.array_equal(a, b)  # two different fonts


def test_characters_missing_from_a_font_are_dropped_with_a_count(tmp_path):
    data = DataConfig(source="glyphs", image_size=16, glyphs=GlyphConfig(chars=["ABCD", "永和九"]))
    prepare(data, tmp_path / "out", tmp_path / "r.json")
    glyphs = json.loads((tmp_path / "r.json").read_text())["glyphs"]
    assert glyphs["requested"] == 7 and glyphs["kept"] == 4
    assert glyphs["dropped_count"] == {"font A: not in the font's character map": 3}


def test_unknown_font_is_a_clear_error(tmp_path):
    data = DataConfig(source="glyphs", image_size=16, glyphs=GlyphConfig(font_b="NoSuchFont.ttf"))
    with pytest.raises(DataError, match=r"data.glyphs.font_b: font 'NoSuchFont.ttf' is neither a file nor"):
        prepare(data, tmp_path / "out", tmp_path / "r.json")


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n")  # fmt: skip


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_only_the_supported_image_formats_are_decoded(tmp_path, mode):
    # Before: any format Pillow knows was opened (PCX, TGA, ICO passed), and an EPS went to Ghostscript
    # where it is installed: an interpreter run on input data.
    from pipeline.data.decode import IMAGE_FORMATS
    from pipeline.image_input import IMAGE_FORMATS as SERVICE_FORMATS

    assert IMAGE_FORMATS is SERVICE_FORMATS  # prepare decodes what the service decodes: one list
    src = good_folder(tmp_path / "src")
    (src / "cat" / "p.pcx").write_bytes(png(90, fmt="PCX"))
    (src / "cat" / "t.tga").write_bytes(png(91, fmt="TGA"))
    (src / "cat" / "i.ico").write_bytes(png(92, size=(16, 16), fmt="ICO"))
    (src / "cat" / "e.eps").write_bytes(EPS)
    reason = "not an image in a supported format (PNG, JPEG, WEBP, BMP, GIF, TIFF)"
    names = ["cat/e.eps", "cat/i.ico", "cat/p.pcx", "cat/t.tga"]
    if mode == "fail":
        with pytest.raises(DataError) as err:
            prepare(cfg(src), tmp_path / "out", tmp_path / "r.json")
        assert str(err.value).splitlines()[1:] == [f"  {n}: {reason}" for n in names]
        return
    prepare(cfg(src, on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    skipped = json.loads((tmp_path / "r.json").read_text())["skipped"]
    assert [(s["file"], s["reason"]) for s in skipped] == [(n, reason) for n in names]
