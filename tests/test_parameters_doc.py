"""docs/parameters.md is generated from pipeline/config.py and dvc.yaml, and the keys config.py
marks logging-only are exactly the ones the resume fingerprint leaves out."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from conftest import REPO

from pipeline.config import AugmentConfig, ModelConfig, Params, TrainConfig, logging_only, parse_params
from pipeline.training.runner import fingerprint


def _script():
    spec = importlib.util.spec_from_file_location("parameters_doc", REPO / "docs" / "parameters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


doc = _script()


def test_the_committed_page_is_the_generated_one():
    committed = (REPO / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert committed == doc.render(), "docs/parameters.md is out of date: run `python docs/parameters.py`"


def test_the_page_names_every_key_and_the_stages_that_read_it():
    page = doc.render()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `")}
    assert set(rows) == {key for key, _, _ in doc.leaf_keys()}
    assert "data.glyphs.font_a" in rows and "evaluate.evaluator.lr" in rows  # nested groups, dotted
    reading = doc.stages_reading(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    assert doc._readers("evaluate.evaluator.lr", reading) == "evaluator"  # a dotted entry stands for its keys
    assert doc._readers("data.image_size", reading) == "prepare, export"  # a group name stands for every key
    assert doc._readers("retrain.fid_margin", reading) == "no stage"
    assert "| ≥ 8, ≤ 1024 |" in rows["data.image_size"] and "`digits`, `stacked`, `folder`" in rows["data.source"]
    assert "*logging only.*" in rows["train.log_every"] and "*logging only.*" not in rows["train.lr_g"]


def test_params_yaml_points_at_the_page():
    assert "docs/parameters.md" in (REPO / "params.yaml").read_text().split("\n\n")[0]


def test_the_logging_only_keys_are_declared_on_their_fields():
    assert logging_only(TrainConfig) == {"sample_every", "fid_every", "log_every", "checkpoint_every", "device",
                                         "compile", "collapse_threshold"}  # fmt: skip
    assert logging_only(ModelConfig) == logging_only(AugmentConfig) == logging_only(Params) == frozenset()


@pytest.fixture
def prepared(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    return tmp_path


@pytest.mark.parametrize(("key", "value"), [("log_every", 7), ("device", "cpu"), ("compile", True),
                                            ("collapse_threshold", 0.5), ("fid_every", 3)])  # fmt: skip
def test_a_logging_only_key_leaves_the_fingerprint_alone(prepared, key, value):
    assert fingerprint(parse_params({"train": {key: value}}), prepared) == fingerprint(parse_params({}), prepared)


def test_a_key_that_shapes_the_weights_changes_the_fingerprint_and_steps_only_when_length_matters(prepared):
    base = parse_params({})
    assert fingerprint(parse_params({"train": {"lr_g": 1e-3}}), prepared) != fingerprint(base, prepared)
    longer = parse_params({"train": {"steps": 5000}})
    assert fingerprint(longer, prepared) == fingerprint(base, prepared)
    assert fingerprint(longer, prepared, length_matters=True) != fingerprint(base, prepared, length_matters=True)
