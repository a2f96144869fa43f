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
    # the batch splits over every process of every machine: 2 x 2 x 2 parts do not fit 12 images
    with pytest.raises(ConfigError, match=r"divide evenly into 4 process\(es\) x train.accumulate 2 = 8 parts"):
        parse_params({"train": {"batch_size": 12, "nnodes": 2, "nproc_per_node": 2, "accumulate": 2}})
    assert parse_params({"train": {"batch_size": 16, "nnodes": 2, "nproc_per_node": 2, "accumulate": 2}})
    with pytest.raises(ConfigError, match="task translate trains in one process"):
        parse_params({"task": "translate", "model": {"arch": "pix2pix"}, "data": {"source": "glyphs"},
                      "train": {"nnodes": 2}})  # fmt: skip
    # drawing the class from the noise applies to unconditional image generators only
    for arch in ("dcgan", "resnet", "stylegan2"):
        assert parse_params({"model": {"classes_from_noise": True, "arch": arch}}).model.noise_classes
        assert not parse_params({"model": {"classes_from_noise": True, "arch": arch, "conditional": True}}) \
            .model.noise_classes  # fmt: skip
    ok = parse_params({"train": {"loss": "wgan-gp", "n_critic": 5}, "model": {"d_norm": "none"}})
    assert ok.train.n_critic == 5


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (byte 0x89 at offset 0); is it a binary file?"),
        ("train:\n  steps: 10  # caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 25)"),
        (b"seed: 0\x00\x00\x00", "not valid YAML: unacceptable character #x0000"),
        (b"train: [unclosed", "not valid YAML: expected ',' or ']', but got '<stream end>' at line 1, column 17"),
    ],
    ids=["binary", "latin-1", "nul-bytes", "yaml-syntax"],
)
def test_an_unreadable_params_file_is_one_line_naming_it(tmp_path, content, fragment):
    # Before: binary and Latin-1 files ended in a UnicodeDecodeError traceback; YAML errors spanned five lines.
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {fragment}") and "\n" not in str(err.value)


def test_a_folder_given_as_params_is_one_line_naming_it(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"params\.yaml: cannot be read: Is a directory$"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("content", ["", "\n\n", "# every line commented out\n# train:\n#   steps: 10\n", "---\n"])
def test_an_empty_params_file_is_refused_rather_than_read_as_every_default(tmp_path, content):
    # Before: parsed as {}, so a truncated or wrongly generated params.yaml trained silently on defaults.
    path = tmp_path / "params.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == (f"{path}: is empty (no parameters); write the groups that differ from the defaults, "
                              "or {} to train with every default")  # fmt: skip
    path.write_text("{}\n")
    assert load_params(path) == parse_params({})  # every default, asked for explicitly


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xfes\x00e\x00e\x00d\x00", "not UTF-8 text (byte 0xff at offset 0); is it a binary file?"),
    (b"", "is empty (no parameters)"),
])  # fmt: skip
def test_the_cli_reports_a_bad_params_file_in_one_line_and_exit_2(tmp_path, capsys, content, message):
    from flows.cli import main

    path = tmp_path / "params.yaml"
    path.write_bytes(content)  # a UTF-16 file, as some editors save; an empty one
    code = main(["preview-augment", "--params", str(path), "--prepared", str(tmp_path), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"ganpipe preview-augment: error: {path}: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "p").exists()


def test_exp_reports_a_binary_overlay_in_one_line(tmp_path, capsys):
    from flows.cli import main

    overlay = tmp_path / "overlay.yaml"
    overlay.write_bytes(b"\x1f\x8b\x08\x00gzip")  # a compressed file given by mistake
    assert main(["exp", str(overlay)]) == 2
    err = capsys.readouterr().err
    assert err == f"ganpipe exp: error: {overlay}: not UTF-8 text (byte 0x8b at offset 1); is it a binary file?\n"


@pytest.mark.parametrize(("content", "message"), [
    ("seed: 1\ntrain:\n  steps: 10\n  lr_g: 0.001\nseed: 2\ntrain:\n  batch_size: 8\n",
     "duplicate key 'seed' (first at line 1), again at line 5, column 1"),
    ("train:\n  steps: 10\nmodel:\n  arch: dcgan\ntrain:\n  batch_size: 8\n",
     "duplicate key 'train' (first at line 1), again at line 5, column 1"),
    ("train:\n  steps: 10\n  lr_g: 0.001\n  steps: 20\n",
     "duplicate key 'steps' (first at line 2), again at line 4, column 3"),
    ("train: {steps: 10, steps: 20}\n", "duplicate key 'steps' (first at line 1), again at line 1, column 20"),
])  # fmt: skip
def test_a_key_given_twice_is_refused_naming_the_key_and_both_lines(tmp_path, content, message):
    # Before: accepted silently; a second `train:` group reset every train setting of the first to its default.
    path = tmp_path / "params.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: {message} (give each key once: the second would replace the first)"


@pytest.mark.parametrize(("content", "message"), [
    ("seed: " + "7" * 5000 + "\n",
     "an integer of 5,000 characters at line 1, column 7 (Python reads at most 4,300 digits)"),
    ("seed: " + "[" * 50_000 + "]" * 50_000 + "\n", "nesting deeper than 64 levels at line 1, column 70"),
])  # fmt: skip
def test_a_huge_integer_or_deep_nesting_is_one_line_naming_the_file(tmp_path, capsys, content, message):
    # Before: a 46-line ValueError and a 2,999-line RecursionError traceback, neither naming the file.
    from flows.cli import main

    path = tmp_path / "params.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: {message}"
    code = main(["preview-augment", "--params", str(path), "--prepared", str(tmp_path), "--out", str(tmp_path / "p")])
    assert code == 2 and capsys.readouterr().err == f"ganpipe preview-augment: error: {path}: {message}\n"


def test_yaml_aliases_are_refused_before_they_can_expand(tmp_path):
    """Nine anchors of ten aliases each under data.glyphs.chars stand for 10^9 strings in 5.9 KB: the
    error message formatted the expanded value (over 90 s, MemoryError under a 4 GB limit). Checked in a
    child process with 1 GB of address space and a time limit, so the old behaviour fails, not hangs."""
    import subprocess
    import sys
    import time

    from conftest import REPO

    lines = ["data:", "  glyphs:", "    chars:", "      - &a0 [" + ", ".join(['"' + "ab" * 270 + '"'] * 10) + "]"]
    lines += [f"      - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines += ["      - [" + ", ".join(["*a8"] * 10) + "]"]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 6200
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
              "from pipeline.config import ConfigError, load_params\n"
              "try:\n    load_params(sys.argv[1])\nexcept ConfigError as err:\n    print(err)\n")  # fmt: skip
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.stdout == (f"{path}: an alias (*a0) at line 5, column 14 (params files take no YAML aliases: "
                          "write the value out)\n"), res.stderr[-2000:]  # fmt: skip
    assert time.monotonic() - started < 30


def test_a_bad_value_is_shown_cut_short_whatever_its_size():
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"glyphs": {"chars": [[["x" * 10_000] * 1000] * 1000]}}}, "p.yaml")
    assert len(str(err.value)) < 1000 and "data.glyphs.chars.0: Input should be a valid string" in str(err.value)


def test_the_strict_yaml_reader_is_still_offered_by_config():
    from pipeline import config, params_yaml

    assert config.read_yaml is params_yaml.read_yaml and config.ConfigError is params_yaml.ConfigError
