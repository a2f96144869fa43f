"""The metric registry: a registered metric reaches metrics/eval.json and the report, beside its
anchors, without any change to the suites."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, merge, tiny_params

from pipeline.artifacts import write_json
from pipeline.config import parse_params
from pipeline.dataset import load_split, to_float
from pipeline.metrics.distance import fid
from pipeline.metrics.evaluator import train_evaluator
from pipeline.metrics.registry import MODEL, Column, ImageSet, Registry
from pipeline.training.runner import TrainPaths, train


def test_layout_anchors_rounding_derived_numbers_table_and_notes():
    reg = Registry()

    @reg.register(
        Column("a", "first", digits=2, anchors=("floor", "ceiling")),
        Column("b", "second", better="higher", digits=1, anchors=("floor",), source="b_raw"),
        derived={"a_vs_floor": lambda raw: raw[MODEL]["a"] / raw["floor"]["a"]},
        note=lambda m: [f"a is {m['a']}"],
    )
    def first(run, s):
        return {"a": s.features * 1.2345, "b_raw": s.features + 0.06}

    @reg.register(Column("c", "per class", anchors=("floor",), in_table=False), group="first")
    def third(run, s):
        return {"c": {"x": s.features / 3, "y": [s.features / 7]}}

    @reg.register(Column("d", "by column", anchors=("floor",), ideal="0"), Column("e", "no anchor"), by_column=True)
    def fourth(run, s):
        return {"d": s.features, "e": 1.0}

    @reg.register(Column("skipped", "not for this run"), when=lambda run: run == "other")
    def fifth(run, s):
        raise AssertionError("a metric whose `when` is false is not computed")

    sets = {MODEL: ImageSet(None, 2.0), "floor": ImageSet(None, 1.0), "ceiling": ImageSet(None, 4.0)}
    m = reg.measure("run", sets)
    # a group: all values, then every column's anchors, then the derived numbers; by_column: interleaved
    assert list(m) == ["a", "b", "c", "a_floor", "a_ceiling", "b_floor", "c_floor", "a_vs_floor", "d", "d_floor", "e"]
    assert m["a"] == 2.47 and m["a_ceiling"] == 4.94 and m["b"] == 2.1 and m["a_vs_floor"] == pytest.approx(2.0)
    assert m["c"] == {"x": 0.6667, "y": [0.2857]} and m["c_floor"] == {"x": 0.3333, "y": [0.1429]}
    assert reg.anchors("run") == ["floor", "ceiling"]
    assert [c.key for c in reg.table_columns(m)] == ["a", "b", "d", "e"]  # not c (in_table=False)
    e = reg.table_columns(m)[3]
    assert e.cell(m, mark="**") == "**1.000**" and e.cell(m, "floor") == "–"
    assert reg.table_columns(m)[2].cell(m, "ceiling") == "0"  # its ideal value where it is not measured
    assert reg.notes(m) == ["a is 2.47"] and reg.notes({"b": 1}) == []
    with pytest.raises(ValueError, match="better"):
        Column("x", "y", better="up")
    # a metric reads pixels in [-1, 1] from real (uint8) and generated (float) sets alike
    assert ImageSet(np.array([[0, 255]], dtype=np.uint8), None).pixels().tolist() == [[-1.0, 1.0]]
    assert ImageSet(torch.tensor([[-1.0, 0.5]]), None).pixels().tolist() == [[-1.0, 0.5]]


@pytest.fixture
def added_generation_metrics():
    """Two metrics registered from outside the suite, removed again after the test."""
    from pipeline.metrics.suite import CEILING, GENERATION, REAL_FLOOR

    @GENERATION.register(
        Column("fid_recomputed", "FID, computed again by this test", anchors=(REAL_FLOOR, CEILING), compared=True),
        Column("set_size", "images in the set", better="", fmt="d", anchors=(REAL_FLOOR, CEILING)),
        note=lambda m: [f"- Recomputed FID: {m['fid_recomputed']:.4f}."],
    )
    def test_fid(run, s):
        return {"fid_recomputed": fid(run.ref, s.features), "set_size": len(s.images)}

    yield
    GENERATION.remove("test_fid")


def test_a_registered_metric_is_measured_on_every_anchor_and_reported(
    added_generation_metrics, prepared_digits, tmp_path
):
    from pipeline.metrics.suite import GENERATION, evaluate, generation_markdown

    params = tiny_params(train={"fid_every": 0})
    train_evaluator(params.evaluate.evaluator, load_split(prepared_digits, "train"),
                    load_split(prepared_digits, "val"), tmp_path / "ev.pt", progress=False)  # fmt: skip
    paths = TrainPaths(prepared=prepared_digits, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                       live_dir=None, samples=tmp_path / "s.png")  # fmt: skip
    train(params, paths, progress=False)
    m = evaluate(params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared_digits, comparison_png=None, figures_dir=None)
    write_json(tmp_path / "eval.json", m)
    written = json.loads((tmp_path / "eval.json").read_text())
    # the suite's own FID, on the samples and on both anchor sets, recomputed by the new metric
    for sfx in ("", "_real_floor", "_untrained_ceiling"):
        assert written["fid_recomputed" + sfx] == written["fid" + sfx] > 0
        assert written["set_size" + sfx] == written["num_samples"] == len(load_split(prepared_digits, "val").labels)
    assert list(written)[-6:] == ["fid_recomputed", "set_size", "fid_recomputed_real_floor",
                                  "fid_recomputed_untrained_ceiling", "set_size_real_floor",
                                  "set_size_untrained_ceiling"]  # fmt: skip
    md = generation_markdown(written).splitlines()
    header = next(line for line in md if line.startswith("| | FID | KID"))
    assert header.endswith("| fid recomputed | set size |")
    floor, model, ceiling = md[md.index(header) + 2 : md.index(header) + 5]
    assert model.endswith(f"| **{m['fid']:.3f}** | **{m['num_samples']}** |")
    assert floor.endswith(f"| {m['fid_real_floor']:.3f} | {m['num_samples']} |")
    assert ceiling.endswith(f"| {m['fid_untrained_ceiling']:.3f} | {m['num_samples']} |")
    assert md[-1] == f"- Recomputed FID: {m['fid']:.4f}."
    # a compared column is a DVC metric (eval.json); its anchors and the other columns are details
    compared, details = GENERATION.split(m)
    assert list(compared)[:5] == ["fid", "fid_vs_floor", "precision", "recall", "coverage"]
    assert list(compared)[-1] == "fid_recomputed" and set(compared) <= {*GENERATION.compared(), "class_accuracy"}
    assert {"fid_recomputed_real_floor", "set_size", "kid", "num_samples"} <= set(details)
    assert compared | details == m and not set(compared) & set(details)


def test_a_registered_translation_metric_gets_its_row_and_baselines(tmp_path):
    from pipeline.data.prepare import prepare
    from pipeline.metrics.translation import (
        IDENTITY,
        REAL_FLOOR,
        TRANSLATION,
        evaluate_translation,
        translation_markdown,
    )

    @TRANSLATION.register(
        Column("mean_abs", "mean |pixel| of the set", label="mean abs", fmt=".4f", digits=5,
               anchors=(IDENTITY, REAL_FLOOR)),
    )  # fmt: skip
    def test_mean_abs(run, s):
        return {"mean_abs": float(s.images.abs().mean())}

    try:
        params = parse_params(merge(TINY, {
            "task": "translate",
            "data": {"source": "glyphs", "image_size": 16, "glyphs": {"chars": ["ascii"]}},
            "model": {"arch": "pix2pix", "g_channels": 8, "d_channels": 8, "n_blocks": 2},
            "train": {"steps": 2, "batch_size": 4, "fid_every": 0},
        }))  # fmt: skip
        prepared = tmp_path / "prepared"
        prepare(params.data, prepared, tmp_path / "report.json")
        val_a, val_b = (load_split(prepared, "val", d).images for d in "AB")
        train_evaluator(params.evaluate.evaluator, load_split(prepared, "train", "B"), load_split(prepared, "val", "B"),
                        tmp_path / "ev.pt", seed=0, progress=False)  # fmt: skip
        train(params, TrainPaths(prepared=prepared, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                                 live_dir=None, samples=tmp_path / "s.png"), progress=False)  # fmt: skip
        m = evaluate_translation(params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared, comparison_png=None)
        md = translation_markdown(m).splitlines()
    finally:
        TRANSLATION.remove("test_mean_abs")
    assert m["mean_abs_identity_baseline"] == round(float(to_float(val_a).abs().mean()), 5)
    assert m["mean_abs_real_floor"] == round(float(to_float(val_b).abs().mean()), 5)
    assert 0 < m["mean_abs"] <= 1 and list(m)[-3:] == ["mean_abs", "mean_abs_identity_baseline", "mean_abs_real_floor"]
    base, floor = m["mean_abs_identity_baseline"], m["mean_abs_real_floor"]
    row = f"| mean abs | **{m['mean_abs']:.4f}** | {base:.4f} | {floor:.4f} |"
    assert md.index(row) == 1 + next(
        i for i, line in enumerate(md) if line.startswith("| SSIM |")
    )  # the table's last row
    assert "l1" in m and "mean_abs" not in evaluate_translation(
        params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared, comparison_png=None
    )  # removed: gone again
