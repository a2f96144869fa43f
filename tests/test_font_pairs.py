"""docs/font_pairs.py, which measures the pix2pix preset across font pairs for the docs: one
pair end to end with tiny params (results, table, figure), a missing font named with its Debian
package, and docs/style-transfer.md's table made from the committed results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_PAIR = ["data.image_size=16", "data.glyphs.chars=[ascii]", "model.g_channels=8", "model.d_channels=8",
             "model.n_blocks=2", "train.steps=4", "train.batch_size=4", "train.checkpoint_every=2",
             "train.sample_every=2"]  # fmt: skip


def font_pairs():
    spec = importlib.util.spec_from_file_location("font_pairs", REPO / "docs" / "font_pairs.py")
    module = sys.modules["font_pairs"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pair_runs_into_the_results_the_table_and_the_figure(tmp_path):
    from pipeline.dataset import load_split, to_float

    fp = font_pairs()
    dirs = ["--out", str(tmp_path / "docs"), "--work", str(tmp_path / "work")]
    assert fp.main(["latin", *dirs, *(x for s in TINY_PAIR for x in ("--set", s))]) == 0
    results = json.loads((tmp_path / "docs" / "bench" / "font_pairs.json").read_text())
    r = results["latin"]
    assert (r["steps"], r["fonts"], r["set"]) == (4, ["DejaVuSans.ttf", "DejaVuSerif.ttf"], TINY_PAIR)
    assert 0 < r["held_out"] < r["train"] + r["held_out"] <= r["kept"] <= r["requested"]  # look-alikes are kept once
    val_a, val_b = (to_float(load_split(tmp_path / "work" / "latin" / "prepared", "val", d).images) for d in "AB")
    assert r["l1_untranslated"] == pytest.approx(float((val_a - val_b).abs().mean()), abs=1e-4)
    assert r["l1_lower_by"] == pytest.approx(1 - r["l1"] / r["l1_untranslated"], rel=5e-3)  # of rounded L1s
    assert (tmp_path / "docs" / "images" / "font_pairs.png").stat().st_size > 0

    fig = fp.figure(results, tmp_path / "work")
    labels = [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_ylabel() for ax in fig.axes]
    assert any(f"L1 {100 * r['l1_lower_by']:.1f} % lower than input" in label for label in labels)
    row = f"| {r['train']} / {r['held_out']} | {r['l1_untranslated']:.4f} | {r['l1']:.4f} |"
    assert row in fp.table(results) and "DejaVuSans → DejaVuSerif" in fp.table(results)


def test_a_missing_font_is_named_with_its_package_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    fp = font_pairs()
    monkeypatch.setitem(fp.PAIRS, "hangul", ("/nonexistent/NanumGothic.ttf", *fp.PAIRS["hangul"][1:]))
    assert fp.main(["hangul", "--out", str(tmp_path / "docs"), "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert "NanumGothic.ttf: font of pair 'hangul' missing; install the Debian package(s) fonts-nanum" in err
    assert not (tmp_path / "docs").exists() and not (tmp_path / "work").exists()


def test_the_readme_table_is_the_committed_results():
    fp = font_pairs()
    results = json.loads((REPO / "docs" / "bench" / "font_pairs.json").read_text())
    assert set(results) == set(fp.PAIRS)
    assert fp.table(results) in (REPO / "docs" / "style-transfer.md").read_text()
