from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_file_is_valid_and_matches_the_documented_defaults():
    p = load_params(REPO / "params.yaml")
    assert p.data.source == "digits" and p.data.image_size == 32
    assert p.model.arch == "dcgan" and p.train.loss == "nonsaturating"
    assert p.train.lr_g == 2e-4 and p.train.betas == (0.5, 0.999)


def test_unknown_key_is_named_with_its_full_path():
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"stepz": 10}}, "my.yaml")
    assert "my.yaml" in str(err.value) and "train.stepz" in str(err.value) and "unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"data": {"image_size": 48}}, "data.image_size", "power of two"),
        ({"train": {"steps": 0}}, "train.steps", "greater than or equal to 1"),
        ({"model": {"arch": "stylegan9"}}, "model.arch", "dcgan"),
        ({"data": {"source": "folder"}}, "data", "needs data.path"),
        ({"augment": {"diffaugment": "color,blur"}}, "augment.diffaugment", "blur"),
        ({"train": {"lr_g": "fast"}}, "train.lr_g", "'fast'"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(raw, key, fragment):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert key in str(err.value) and fragment in str(err.value)


def test_missing_and_malformed_files_are_reported_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(listy)


def test_section_hash_changes_only_with_the_named_sections():
    a = parse_params({})
    b = parse_params({"export": {"opset": 19}})
    c = parse_params({"train": {"steps": 7}})
    assert a.section_hash("model", "train") == b.section_hash("model", "train")
    assert a.section_hash("model", "train") != c.section_hash("model", "train")


def test_inconsistent_combinations_are_refused_with_the_fix_named():
    with pytest.raises(ConfigError, match=r"set model\.d_norm: none"):
        parse_params({"train": {"loss": "wgan-gp"}})
    with pytest.raises(ConfigError, match="must divide evenly"):
        parse_params({"train": {"batch_size": 10, "nproc_per_node": 4}})
    ok = parse_params({"train": {"loss": "wgan-gp", "n_critic": 5}, "model": {"d_norm": "none"}})
    assert ok.train.n_critic == 5
