import os
import subprocess
import sys

import pytest
from conftest import REPO

from pipeline.cli import main, overrides


def test_overlay_flattens_to_dvc_set_param_arguments_with_typed_values():
    overlay = {"model": {"conditional": True, "d_norm": "none"}, "train": {"betas": [0.0, 0.9], "lr_d": 4e-4}}
    assert overrides(overlay) == [
        "++model.conditional=true",
        '++model.d_norm="none"',
        "++train.betas=[0.0,0.9]",
        "++train.lr_d=0.0004",
    ]


def test_shipped_overlays_are_valid_on_top_of_params_yaml():
    import yaml

    from pipeline.cli import merge_overlay
    from pipeline.config import load_params, parse_params

    base = load_params(REPO / "params.yaml").model_dump(mode="json")
    names = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert names == ["conditional-digits.yaml", "digits-10pct-ada.yaml", "digits-10pct-diffaugment.yaml",
                     "digits-10pct.yaml", "fashion-mnist.yaml", "glyphs-cyclegan.yaml", "glyphs-pix2pix.yaml",
                     "hinge-sn.yaml", "wgan-gp.yaml"]  # fmt: skip
    for name in names:
        overlay = yaml.safe_load((REPO / "configs" / name).read_text())
        parse_params(merge_overlay(base, overlay), name)  # raises on any bad key or combination


def test_exp_refuses_an_invalid_overlay_before_running_anything(tmp_path):
    import shutil

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # never the repository's own file
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  loss: wgan-gp\n")  # wgan-gp with the default batch-norm D
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "exp", str(bad)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2
    assert "bad.yaml" in res.stderr and "set model.d_norm: none" in res.stderr
    assert "Prefect API" not in res.stderr  # refused before a server was started


def test_unknown_options_are_errors_except_where_they_go_to_dvc():
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--bogus"])
    assert exc.value.code == 2


def test_preview_augment_shows_originals_beside_augmented_copies(prepared_digits, tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "aug.png"
    code = main(["preview-augment", "--params", str(REPO / "params.yaml"), "--prepared", str(prepared_digits),
                 "--policy", "translation,cutout", "-n", "8", "--nrow", "4", "--out", str(out)])  # fmt: skip
    assert code == 0
    img = np.asarray(Image.open(out).convert("L"))
    third = img.shape[1] // 3
    original, augmented = img[:, :third], img[:, third : 2 * third]
    assert img.shape[0] == 3 * (2 * 18 + 2) and not np.array_equal(original, augmented)
    bad = main(["preview-augment", "--params", str(REPO / "params.yaml"), "--policy", "blur",
                "--prepared", str(prepared_digits), "--out", str(tmp_path / "never.png")])  # fmt: skip
    assert bad == 2 and not (tmp_path / "never.png").exists()


def test_pipeline_summary_reads_both_export_formats():
    from flows.pipeline import summary_markdown

    one = {"max_abs_diff": 1e-7, "tolerance": 1e-4, "parity_passed": True, "providers": ["CPUExecutionProvider"],
           "latency_ms_batch16": {"onnxruntime": 1.0, "torch": 2.0}}  # fmt: skip
    assert "ONNX parity: max |onnx - torch| = 1.00e-07" in summary_markdown({"export": one})
    both = summary_markdown({"export": {**one, "directions": {"AB": one, "BA": {**one, "parity_passed": False}}}})
    assert "ONNX parity AB:" in both and "ONNX parity BA:" in both and "FAILED" in both
