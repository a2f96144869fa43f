"""`ganpipe export-triton`: the written config.pbtxt is parsed with Triton's own model-configuration
schema, then checked against the ONNX file as ONNX Runtime (Triton's onnxruntime backend) loads
it, and the repository's copy is run at batch 1 and at max_batch_size against the original export."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from test_export import save_generator
from tritonclient.grpc import model_config_pb2 as mc

from flows.cli import main as ganpipe
from pipeline import layout
from pipeline.config import ModelConfig
from pipeline.export import export_generator, export_translators
from pipeline.models import build_generator
from pipeline.models.artifact import save_model
from pipeline.registry import Registry

DTYPES = {"tensor(float)": mc.TYPE_FP32, "tensor(int64)": mc.TYPE_INT64}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An unconditional and a conditional generator, and an (untrained) CycleGAN's two translators."""
    root = tmp_path_factory.mktemp("triton_exports")
    export_generator(save_generator(root / "g.pt"), root / "generator.onnx", card_path=root / "card.json")
    export_generator(save_generator(root / "c.pt", conditional=True), root / "cond" / "generator.onnx")
    cfg = ModelConfig(arch="cyclegan", g_channels=8, n_blocks=2)
    torch.manual_seed(0)
    gens = {d: build_generator(cfg, 16, 1) for d in ("AB", "BA")}
    spec = {"task": "translate", "model": cfg.model_dump(mode="json"), "image_size": 16, "channels": 1,
            "directions": ["AB", "BA"], "size_multiple": gens["AB"].size_multiple, "min_size": gens["AB"].min_size,
            "num_classes": 0, "class_names": []}  # fmt: skip
    save_model(root / "t.pt", spec, {d: g.state_dict() for d, g in gens.items()}, 0)
    export_translators(root / "t.pt", root / "cycle")
    return root


def load_config(folder) -> mc.ModelConfig:
    """Triton's schema: an unknown field, a wrong type or a bad enum value fails the parse."""
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_matches_model(cfg: mc.ModelConfig, model_file) -> None:
    """What Triton's onnxruntime backend checks: each declared tensor exists with the same type, the
    model's first dim is dynamic (it batches), and the declared dims are the model's other dims. The
    inputs a request may leave out (initializers listed in ganpipe.inputs) are declared, and optional."""
    sess = session(model_file)
    assert cfg.max_batch_size > 0
    listed = json.loads(sess.get_modelmeta().custom_metadata_map.get("ganpipe.inputs", "[]"))
    optional = [a for a in sess.get_overridable_initializers() if a.name in listed]
    assert [t.name for t in cfg.input if t.optional] == [a.name for a in optional]
    for declared, actual in ((cfg.input, [*sess.get_inputs(), *optional]), (cfg.output, sess.get_outputs())):
        assert sorted(t.name for t in declared) == sorted(a.name for a in actual)
        by_name = {a.name: a for a in actual}
        for t in declared:
            a = by_name[t.name]
            assert t.data_type == DTYPES[a.type], t.name
            assert isinstance(a.shape[0], str), f"{t.name}: batch dim not dynamic"
            dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            assert dims == [d if isinstance(d, int) else -1 for d in a.shape[1:]], t.name
            if t.HasField("reshape"):  # Triton: as many elements before and after
                assert np.prod(list(t.dims)) == np.prod(dims) and -1 not in t.dims


def run_both(cfg: mc.ModelConfig, folder, original, n: int, side: int = 16, version: int = 1) -> np.ndarray:
    """Inputs shaped as a Triton client sends them per the config, reshaped as Triton does, run by
    the repository's model.onnx and by the original export: the outputs must be identical."""
    rng = np.random.default_rng(n)
    num_classes = int(cfg.parameters["ganpipe.num_classes"].string_value)
    feed = {}
    for t in cfg.input:
        shape = [n] + [side if d == -1 else d for d in t.dims]
        x = (rng.integers(0, num_classes, shape) if t.data_type == mc.TYPE_INT64 else
             rng.uniform(-1, 1, shape).astype(np.float32))  # fmt: skip
        feed[t.name] = x.reshape([n, *t.reshape.shape]) if t.HasField("reshape") else x
    names = [o.name for o in cfg.output]
    got = session(folder / str(version) / "model.onnx").run(names, feed)
    want = session(original).run(names, feed)
    for o, g, w in zip(cfg.output, got, want, strict=True):
        assert list(g.shape) == [n] + [side if d == -1 else d for d in o.dims]
        np.testing.assert_array_equal(g, w)
    return got[0]


def one_line_error(capsys, *expected: str) -> None:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


def test_generator_repository_is_a_triton_config_of_its_onnx_file(exports, tmp_path, capsys):
    src = exports / "generator.onnx"
    assert ganpipe(["export-triton", "--model", str(src), "--out", str(tmp_path / "repo")]) == 0
    assert "tritonserver --model-repository=" in capsys.readouterr().out
    folder = tmp_path / "repo" / "generator"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == \
        ["1", "1/model.onnx", "config.pbtxt"]  # fmt: skip
    assert (folder / "1" / "model.onnx").read_bytes() == src.read_bytes()
    cfg = load_config(folder)
    assert cfg.name == "generator" and cfg.backend == "onnxruntime" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 64 and [t.name for t in cfg.input] == ["z"] and list(cfg.input[0].dims) == [8]
    assert not cfg.input[0].optional  # only inputs a model may go without are optional (truncation_psi)
    assert_matches_model(cfg, folder / "1" / "model.onnx")
    batching = cfg.dynamic_batching
    assert batching.preferred_batch_size and max(batching.preferred_batch_size) <= cfg.max_batch_size
    assert batching.max_queue_delay_microseconds == 100
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    meta = {p.key: p.value for p in onnx.load(src).metadata_props}
    assert {k: v.string_value for k, v in cfg.parameters.items()} == meta  # every ganpipe.* prop, verbatim
    for n in (1, cfg.max_batch_size):
        run_both(cfg, folder, src, n)


def test_conditional_generator_takes_labels_batched_with_z(exports, tmp_path):
    src = exports / "cond" / "generator.onnx"
    assert ganpipe(["export-triton", "--model", str(src), "--out", str(tmp_path), "--name", "digits-v2",
                    "--max-batch-size", "5", "--gpu", "--queue-delay-us", "0"]) == 0  # fmt: skip
    folder = tmp_path / "digits-v2"
    cfg = load_config(folder)
    assert cfg.name == "digits-v2" and cfg.max_batch_size == 5
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    labels = next(t for t in cfg.input if t.name == "labels")
    assert labels.data_type == mc.TYPE_INT64 and list(labels.dims) == [1] and list(labels.reshape.shape) == []
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert json.loads(cfg.parameters["ganpipe.class_names"].string_value) == ["a", "b", "c"]
    assert cfg.parameters["ganpipe.latent_dim"].string_value == "8"
    assert_matches_model(cfg, folder / "1" / "model.onnx")
    for n in (1, 5):
        assert run_both(cfg, folder, src, n).shape == (n, 1, 16, 16)


def test_each_direction_of_a_cyclegan_is_its_own_triton_model(exports, tmp_path, monkeypatch):
    models = [exports / "cycle" / layout.ONNX_TRANSLATORS[d].name for d in ("AB", "BA")]
    (tmp_path / layout.EXPORTS).mkdir()
    for src in models:
        shutil.copy(src, tmp_path / layout.EXPORTS)
    monkeypatch.chdir(tmp_path)  # no --model: every file the export stage wrote
    assert ganpipe(["export-triton", "--out", "repo"]) == 0
    repo = tmp_path / "repo"
    assert sorted(p.name for p in repo.iterdir()) == ["generator_AB", "generator_BA"]
    for direction, src in zip(("AB", "BA"), models, strict=True):
        cfg = load_config(repo / f"generator_{direction}")
        assert cfg.name == f"generator_{direction}" and cfg.max_batch_size == 8
        assert cfg.parameters["ganpipe.direction"].string_value == direction
        assert [list(t.dims) for t in [*cfg.input, *cfg.output]] == [[1, -1, -1], [1, -1, -1]]  # H, W dynamic
        assert_matches_model(cfg, repo / f"generator_{direction}" / "1" / "model.onnx")
        run_both(cfg, repo / f"generator_{direction}", src, 1, side=16)
        run_both(cfg, repo / f"generator_{direction}", src, cfg.max_batch_size, side=24)


def test_a_registry_version_is_exported_under_its_number(exports, tmp_path):
    work = tmp_path / "work"
    (work / layout.EXPORTS).mkdir(parents=True)
    shutil.copy(exports / "generator.onnx", work / layout.ONNX_GENERATOR)
    shutil.copy(exports / "card.json", work / layout.MODEL_CARD)
    (work / "metrics").mkdir()
    (work / layout.EVAL_METRICS).write_text('{"fid": 10.0}')
    (work / layout.EXPORT_METRICS).write_text('{"parity_passed": true}')
    (work / layout.PARAMS).write_text("{}\n")
    (work / layout.DVC_LOCK).write_text("")
    reg = Registry(tmp_path / "reg")
    assert [reg.promote(work), reg.promote(work)] == ["v0001", "v0002"]
    out = tmp_path / "repo"
    assert ganpipe(["export-triton", "--registry", str(reg.root), "--version", "champion", "--out", str(out)]) == 0
    assert [p.name for p in (out / "generator").iterdir() if p.is_dir()] == ["2"]
    cfg = load_config(out / "generator")
    assert cfg.parameters["ganpipe.registry_version"].string_value == "v0002"
    run_both(cfg, out / "generator", exports / "generator.onnx", 3, version=2)
    out = tmp_path / "r1"
    assert ganpipe(["export-triton", "--registry", str(reg.root), "--version", "v0001", "--out", str(out)]) == 0
    assert (out / "generator" / "1" / "model.onnx").is_file()


def not_ganpipe(path, ir_version: int = 10):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "plain", [x], [y])
    opset = [onnx.helper.make_opsetid("", 18)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opset, ir_version=ir_version), path)
    return path


def test_bad_input_is_one_line_and_writes_nothing(exports, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty checkout: no exports/
    out, good = tmp_path / "repo", str(exports / "generator.onnx")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes((exports / "generator.onnx").read_bytes()[:5000])
    cases = [
        ([], "exports: no exported model; run the export stage or pass --model"),
        (["--model", good, "--model", str(tmp_path / "missing.onnx")], "missing.onnx: ONNX model not found"),
        (["--model", str(not_ganpipe(tmp_path / "plain.onnx"))], "plain.onnx: not a ganpipe export"),
        (["--model", str(truncated)], "cut.onnx: cannot be loaded by ONNX Runtime"),
        (["--model", str(not_ganpipe(tmp_path / "future.onnx", 99))], "future.onnx: cannot be loaded"),  # ORT: 3 lines
        (["--model", good, "--model", good], "would both be Triton model 'generator'"),
        (["--model", good, "--name", "../up"], "--name '../up'"),
        (["--model", good, "--version", "v0001"], "--model and --version are alternatives"),
        (["--registry", str(tmp_path / "none"), "--version", "v0001"], "no version 'v0001'"),
    ]
    for args, expected in cases:
        assert ganpipe(["export-triton", *args, "--out", str(out)]) == 2, args
        one_line_error(capsys, expected)
        assert not out.exists(), args
    (tmp_path / "file").write_text("")
    assert ganpipe(["export-triton", "--model", good, "--out", str(tmp_path / "file")]) == 2
    one_line_error(capsys, "file: is a file")


def test_an_existing_model_folder_is_replaced_only_with_force(exports, tmp_path, capsys):
    src, out = str(exports / "generator.onnx"), tmp_path / "repo"
    (out / "other" / "1").mkdir(parents=True)  # another model in the same repository
    assert ganpipe(["export-triton", "--model", src, "--out", str(out)]) == 0
    (out / "generator" / "2").mkdir()  # an older version left by hand
    before = (out / "generator" / "config.pbtxt").read_text()
    assert ganpipe(["export-triton", "--model", src, "--out", str(out), "--max-batch-size", "7"]) == 2
    one_line_error(capsys, "generator: already exists; pass --force")
    assert (out / "generator" / "config.pbtxt").read_text() == before and (out / "generator" / "2").is_dir()
    assert ganpipe(["export-triton", "--model", src, "--out", str(out), "--max-batch-size", "7", "--force"]) == 0
    assert load_config(out / "generator").max_batch_size == 7
    assert sorted(p.name for p in (out / "generator").iterdir()) == ["1", "config.pbtxt"]  # the folder replaced whole
    assert sorted(p.name for p in out.iterdir()) == ["generator", "other"]  # no temporary left, other model kept
