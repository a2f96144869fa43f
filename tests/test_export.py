import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from pipeline.config import ModelConfig
from pipeline.export import ExportError, export_generator
from pipeline.inference import ModelError, OnnxGenerator, create_session
from pipeline.models import build_generator

REPO = Path(__file__).resolve().parents[1]


def save_generator(path: Path, conditional: bool = False, classes=("a", "b", "c"), arch: str = "dcgan") -> Path:
    cfg = ModelConfig(arch=arch, latent_dim=8, g_channels=8, conditional=conditional)
    torch.manual_seed(0)
    n = len(classes) if conditional else 0
    g = build_generator(cfg, 16, 1, n)
    spec = {"model": cfg.model_dump(mode="json"), "image_size": 16, "channels": 1, "num_classes": n,
            "class_names": list(classes) if conditional else []}  # fmt: skip
    torch.save({"spec": spec, "state_dict": g.eval().state_dict(), "steps": 0}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    metrics = export_generator(save_generator(root / "g.pt"), root / "generator.onnx", params_hash="abc123",
                               card_path=root / "card.json")  # fmt: skip
    return root, metrics


@pytest.fixture(scope="module")
def exported_conditional(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_cond")
    export_generator(save_generator(root / "g.pt", conditional=True), root / "generator.onnx")
    return root


def test_export_follows_the_onnx_contract(exported):
    root, _ = exported
    model = onnx.load(root / "generator.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["z"]
    assert [o.name for o in model.graph.output] == ["images"]
    z_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert z_dims[0].dim_param and not z_dims[0].dim_value  # dynamic batch
    assert z_dims[1].dim_value == 8
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["ganpipe.task"] == "generate" and meta["ganpipe.latent_dim"] == "8"
    assert meta["ganpipe.num_classes"] == "0" and json.loads(meta["ganpipe.class_names"]) == []
    assert meta["ganpipe.image_size"] == "16" and meta["ganpipe.channels"] == "1"
    assert meta["ganpipe.arch"] == "dcgan" and meta["ganpipe.params_hash"] == "abc123"
    assert len(meta["ganpipe.git_rev"]) in (40, len("unknown"))
    assert not list(root.glob("*.data"))  # weights embedded, no external data file
    # nothing of the exporting machine: no absolute source paths from the exporter's stack traces
    assert str(REPO).encode() not in (root / "generator.onnx").read_bytes()


def test_export_parity_with_pytorch_is_measured_and_recorded(exported):
    root, metrics = exported
    assert metrics["parity_passed"] and metrics["max_abs_diff"] <= 1e-4
    assert set(metrics["max_abs_diff_per_batch"]) == {"batch_1", "batch_16"}
    assert metrics["providers"] == ["CPUExecutionProvider"]
    assert metrics["latency_ms_batch16"]["onnxruntime"] > 0 and metrics["latency_ms_batch16"]["torch"] > 0
    card = json.loads((root / "card.json").read_text())
    assert card["inputs"][0]["name"] == "z" and card["outputs"][0]["shape"] == ["N", 1, 16, 16]


def test_onnx_runs_any_batch_size_and_matches_torch(exported, tmp_path):
    root, _ = exported
    sess = create_session(root / "generator.onnx")
    blob = torch.load(root / "g.pt", weights_only=True)
    g = build_generator(ModelConfig(latent_dim=8, g_channels=8), 16, 1)
    g.load_state_dict(blob["state_dict"])
    g.eval()
    for n in (3, 33):
        z = np.random.default_rng(n).standard_normal((n, 8), dtype=np.float32)
        out = sess.run(["images"], {"z": z})[0]
        with torch.no_grad():
            ref = g(torch.from_numpy(z)).numpy()
        assert out.shape == (n, 1, 16, 16)
        assert np.abs(out - ref).max() <= 1e-4
        assert out.min() >= -1 and out.max() <= 1


def test_conditional_export_takes_labels(exported_conditional):
    model = onnx.load(exported_conditional / "generator.onnx")
    assert [i.name for i in model.graph.input] == ["z", "labels"]
    assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    gen = OnnxGenerator(exported_conditional / "generator.onnx")
    assert gen.info.class_names == ["a", "b", "c"]
    a = gen.generate(4, seed=1, labels=["a"])
    c = gen.generate(4, seed=1, labels=["c"])
    assert a.shape == (4, 1, 16, 16) and not np.allclose(a, c)
    np.testing.assert_array_equal(gen.generate(4, seed=1, labels=["2"]), c)  # index or name
    with pytest.raises(ModelError, match="unknown label 'z'"):
        gen.generate(2, labels=["z"])


def test_resnet_generator_with_conditional_batch_norm_exports_with_parity(tmp_path):
    g_path = save_generator(tmp_path / "g.pt", conditional=True, arch="resnet")
    blob = torch.load(g_path, weights_only=True)
    for name, value in blob["state_dict"].items():  # give every class its own scale and shift
        if name.endswith(("gamma.weight", "beta.weight")):
            value.add_(torch.randn_like(value) * 0.5)
    torch.save(blob, g_path)
    metrics = export_generator(g_path, tmp_path / "resnet.onnx")
    assert metrics["parity_passed"] and metrics["max_abs_diff"] <= 1e-4
    gen = OnnxGenerator(tmp_path / "resnet.onnx")
    assert gen.info.arch == "resnet" and gen.generate(5, labels=["b"]).shape == (5, 1, 16, 16)


def test_failed_parity_writes_no_model(tmp_path):
    with pytest.raises(ExportError, match="not written"):
        export_generator(save_generator(tmp_path / "g.pt"), tmp_path / "out.onnx", tolerance=1e-30)
    assert not (tmp_path / "out.onnx").exists()
    assert not list(tmp_path.glob(".out.onnx*"))


def run_cli(*args, env_extra=None, block_torch=True):
    """Run `ganpipe` in a fresh interpreter; with block_torch, importing torch fails."""
    prelude = "import sys; sys.modules['torch'] = None; " if block_torch else ""
    code = prelude + "from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", "import sys; " + code, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_generate_cli_writes_a_grid_without_torch(exported, tmp_path):
    root, _ = exported
    out = tmp_path / "grid.png"
    res = run_cli("generate", "--model", str(root / "generator.onnx"), "-n", "6", "--seed", "3", "--out", str(out),
                  "--nrow", "3", "--scale", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "CPUExecutionProvider" in res.stdout
    assert "CUDA" not in res.stderr  # no native provider-load noise on a CPU machine
    img = Image.open(out)
    assert img.size == (3 * 18 + 2, 2 * 18 + 2)  # 3 x 2 tiles of 16 px with 2 px padding
    again = tmp_path / "again.png"
    run_cli("generate", "--model", str(root / "generator.onnx"), "-n", "6", "--seed", "3", "--out", str(again),
            "--nrow", "3", "--scale", "1")  # fmt: skip
    assert out.read_bytes() == again.read_bytes()  # same seed, same picture


def test_generate_cli_reports_bad_input_clearly(exported, tmp_path):
    root, _ = exported
    res = run_cli("generate", "--model", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "missing.onnx: ONNX model not found" in res.stderr
    res = run_cli("generate", "--model", str(root / "generator.onnx"), "--label", "7", "--out", str(tmp_path / "y.png"))
    assert res.returncode == 2 and "unconditional model" in res.stderr
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_text("hello")
    res = run_cli("generate", "--model", str(not_onnx), "--out", str(tmp_path / "z.png"))
    assert res.returncode == 2 and "junk.onnx: cannot be loaded" in res.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "z.png").exists()


@pytest.mark.parametrize("label", ["²", "①", "١"])
def test_generate_cli_refuses_a_label_that_is_neither_a_class_nor_an_ascii_index(exported_conditional, tmp_path, label):
    root = exported_conditional
    out = tmp_path / "c.png"
    res = run_cli("generate", "--model", str(root / "generator.onnx"), "--label", label, "--out", str(out))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"unknown label {label!r}" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


FULL_DISK = """
import errno, os, runpy, sys, types
import pipeline.artifacts as artifacts
def full(fd, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# the write system call as a full disk answers it (os.write, in the module that writes outputs only)
calls = {k: getattr(os, k) for k in dir(os) if not k.startswith("__")}
artifacts.os = types.SimpleNamespace(**{**calls, "write": full})
sys.argv = ["flows.export"]
runpy.run_module("flows.export", run_name="__main__")
"""


def test_a_full_disk_during_export_is_one_line_naming_the_path_and_the_space_needed(tmp_path, prefect_api):
    """Before: 145 lines of log, three tracebacks, no path. The disk is filled for real where the test
    may mount a 16 KB tmpfs on exports/ (as root); elsewhere filling a disk is out of reach, and the
    write call fails as a full disk makes it fail: OSError(ENOSPC)."""
    (tmp_path / "models").mkdir()
    save_generator(tmp_path / "models" / "generator.pt")
    (tmp_path / "params.yaml").write_text("{}\n")
    exports = tmp_path / "exports"
    exports.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(exports)],
                                                   capture_output=True).returncode == 0  # fmt: skip
    try:
        cmd = ["-m", "flows.export"] if mounted else ["-c", FULL_DISK]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, *cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert list(exports.iterdir()) == []  # no model, no temporary
    finally:
        if mounted:
            subprocess.run(["umount", str(exports)], check=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("ganpipe export: error: ")]
    assert line.startswith("ganpipe export: error: exports/generator.onnx: no space left on the device: ")
    assert " bytes to write, " in line and " free there" in line and line.endswith(", then run again")
    if mounted:
        assert ", 16,384 bytes free there; free at least " in line
    assert not (tmp_path / "metrics" / "export.json").exists()
