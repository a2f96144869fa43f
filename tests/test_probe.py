"""FID while training (train.fid_every): logged to DVCLive, equal to the evaluate stage's FID at the
last step, and without any effect on the trained weights."""

from __future__ import annotations

import csv

import pytest
from conftest import tiny_params

from pipeline.dataset import load_split
from pipeline.metrics.evaluator import train_evaluator
from pipeline.metrics.suite import evaluate
from pipeline.training.runner import TrainPaths, train


def test_fid_probe_logs_a_curve_matching_evaluate_and_leaves_the_weights_alone(prepared_digits, tmp_path):
    params = tiny_params(evaluate={"evaluator": {"steps": 40, "batch_size": 64}})
    evaluator = tmp_path / "ev.pt"
    train_evaluator(params.evaluate.evaluator, load_split(prepared_digits, "train"), load_split(prepared_digits, "val"),
                    evaluator, progress=False)  # fmt: skip

    def run(name: str, fid_every: int) -> TrainPaths:
        p = tiny_params(train={"fid_every": fid_every})
        paths = TrainPaths(prepared=prepared_digits, checkpoints=tmp_path / name / "ckpt",
                           generator=tmp_path / name / "g.pt", live_dir=tmp_path / name / "live",
                           samples=tmp_path / name / "s.png", evaluator=evaluator)  # fmt: skip
        train(p, paths, progress=False)
        return paths

    plain, probed = run("plain", 0), run("probed", 5)
    assert probed.generator.read_bytes() == plain.generator.read_bytes()  # the probe draws nothing from training
    assert not (plain.live_dir / "plots/metrics/eval/fid.tsv").exists()
    with open(probed.live_dir / "plots/metrics/eval/fid.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [int(r["step"]) for r in rows] == [5, 10, 12]  # every 5 steps and the last
    fids = [float(r["fid"]) for r in rows]
    assert all(v > 0 for v in fids)
    m = evaluate(params, probed.generator, evaluator, prepared_digits, comparison_png=None, figures_dir=None)
    assert fids[-1] == pytest.approx(m["fid"], abs=1e-4)  # the same samples, features and reference
    with open(probed.live_dir / "plots/metrics/eval/fid_vs_floor.tsv") as f:
        last = list(csv.DictReader(f, delimiter="\t"))[-1]
    probe_floor = fids[-1] / float(last["fid_vs_floor"])  # the real-data floor the probe divides by
    assert probe_floor == pytest.approx(m["fid_real_floor"], abs=5e-5)  # eval.json rounds it to 4 decimals
