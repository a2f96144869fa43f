"""Truncation (psi) wherever a generator is used, for models that take the optional `truncation_psi`
input (stylegan2): OnnxGenerator, `ganpipe generate --psi`, /v1/generate's `truncation_psi`, the
Open Inference Protocol's optional input and `ganpipe export-triton`. Models without it (dcgan,
files exported before `ganpipe.inputs`) keep their contract and refuse psi in one clear line,
never with a traceback or a 500."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from test_export import save_generator
from test_registry import tiny_onnx
from test_serve import models, running  # noqa: F401  (models: the fixture)
from test_serve_oip import client, latent, tensor
from test_triton import assert_matches_model, load_config, run_both, session
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from flows.cli import main as ganpipe
from pipeline.export import export_generator
from pipeline.grid import make_grid
from pipeline.inference import ModelError, OnnxGenerator
from pipeline.serve.app import ServeConfig

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def psi_model(tmp_path_factory) -> Path:
    """A conditional stylegan2 generator exported by the pipeline's own code (~15 s), its average w made
    non-zero so that truncation visibly changes the images. Once per session (per xdist worker)."""
    root = tmp_path_factory.getbasetemp() / "psi-model"
    path = root / "stylegan2.onnx"
    if not (root / "complete").exists():
        root.mkdir(exist_ok=True)
        g_pt = save_generator(root / "g.pt", conditional=True, classes=CLASSES, arch="stylegan2")
        blob = torch.load(g_pt, weights_only=True)
        blob["state_dict"]["mapping.w_avg"] = torch.randn(8, generator=torch.Generator().manual_seed(1))
        torch.save(blob, g_pt)
        export_generator(g_pt, path)
        (root / "complete").touch()
    return path


@pytest.fixture(scope="module")
def psi_url(psi_model):
    with running(ServeConfig(model=psi_model, max_n=8)) as url:
        yield url


@pytest.fixture(scope="module")
def dcgan_url(models):  # noqa: F811
    with running(ServeConfig(model=models["generate"], max_n=8)) as url:
        yield url


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image RMS distance."""
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(1))


# -- OnnxGenerator ----------------------------------------------------------------------------------------------------


def test_model_info_lists_the_inputs_and_whether_the_model_truncates(psi_model, models, tmp_path):  # noqa: F811
    info = OnnxGenerator(psi_model).info
    assert info.inputs == ["z", "labels", "truncation_psi"] and info.truncation and info.arch == "stylegan2"
    dcgan = OnnxGenerator(models["generate"]).info
    assert dcgan.inputs == ["z", "labels"] and not dcgan.truncation
    assert json.loads(dcgan.metadata["ganpipe.inputs"]) == ["z", "labels"]
    (tmp_path / "old.onnx").write_bytes(tiny_onnx("generate"))  # exported before ganpipe.inputs existed
    old = OnnxGenerator(tmp_path / "old.onnx").info
    assert "ganpipe.inputs" not in old.metadata and old.inputs == ["z"] and not old.truncation
    # metadata that promises an input the graph does not take is refused at load, not at the first request
    lying = onnx.load_from_string(tiny_onnx("generate"))
    lying.metadata_props.add(key="ganpipe.inputs", value='["z", "truncation_psi"]')
    onnx.save(lying, tmp_path / "lying.onnx")
    with pytest.raises(ModelError, match=r"lying\.onnx: ganpipe\.inputs .* does not match the graph's inputs"):
        OnnxGenerator(tmp_path / "lying.onnx")


def test_psi_pulls_images_towards_one_average_image(psi_model):
    g = OnnxGenerator(psi_model)
    default = g.generate(6, seed=3)
    np.testing.assert_array_equal(g.generate(6, seed=3, truncation_psi=1.0), default)  # 1: no truncation
    zero = g.generate(6, seed=3, truncation_psi=0)
    assert np.abs(zero - zero[:1]).max() < 1e-6  # one image, whatever the z and the class
    np.testing.assert_allclose(g.generate(6, seed=99, truncation_psi=0.0), zero, atol=1e-6)
    assert distance(default, zero[:1]).min() > 0.05  # without truncation the images are not that one
    half = g.generate(6, seed=3, truncation_psi=0.5)
    np.testing.assert_array_equal(g.generate(6, seed=3, truncation_psi=0.5), half)  # same seed and psi, same images
    assert distance(half, default).min() > 1e-3
    # nearer the average image on the whole (in w each one is; through a random network's pixels, not always)
    assert distance(half, zero).mean() < distance(default, zero).mean()
    np.testing.assert_allclose(g.generate(6, seed=3, truncation_psi=0.5, batch_size=4), half, atol=1e-6)
    beyond = g.generate(6, seed=3, truncation_psi=1.5)  # extrapolation is allowed: away from the average image
    assert np.isfinite(beyond).all() and distance(beyond, zero).mean() > distance(half, zero).mean()


@pytest.mark.parametrize("psi", [float("nan"), float("inf"), -float("inf"), 100.5, -1e30, 10**400, "0.5", True])
def test_psi_that_is_not_a_finite_number_within_bounds_is_refused(psi_model, psi):
    with pytest.raises(ModelError) as err:
        OnnxGenerator(psi_model).generate(2, truncation_psi=psi)
    assert "truncation_psi must be a finite number from -100 to 100" in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_psi_for_a_model_without_truncation_is_refused_naming_the_file_and_arch(models):  # noqa: F811
    g = OnnxGenerator(models["plain"])
    with pytest.raises(ModelError) as err:
        g.generate(2, truncation_psi=1.0)  # even the value that changes nothing: the caller expects truncation
    assert str(err.value).startswith(f"{models['plain']}: this model (arch dcgan) has no truncation input")
    np.testing.assert_array_equal(g.generate(2, truncation_psi=None), g.generate(2))


# -- ganpipe generate --psi -------------------------------------------------------------------------------------------


def test_cli_psi_gives_the_grid_of_those_truncated_images(psi_model, tmp_path, capsys):
    args = ["generate", "--model", str(psi_model), "-n", "4", "--seed", "5", "--nrow", "4", "--scale", "1"]
    assert ganpipe([*args, "--psi", "0.25", "--out", str(tmp_path / "q.png")]) == 0
    assert ganpipe([*args, "--out", str(tmp_path / "plain.png")]) == 0
    capsys.readouterr()
    expected = OnnxGenerator(psi_model).generate(4, seed=5, truncation_psi=0.25)
    got = np.asarray(Image.open(tmp_path / "q.png").convert("L"))
    np.testing.assert_array_equal(got, make_grid(expected, nrow=4)[..., 0])
    assert not np.array_equal(got, np.asarray(Image.open(tmp_path / "plain.png").convert("L")))


def test_cli_psi_on_a_model_without_truncation_is_one_line_and_writes_nothing(models, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "never.png"
    assert ganpipe(["generate", "--model", str(models["plain"]), "--psi", "0.7", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"ganpipe generate: error: --psi: {models['plain']}: this model (arch dcgan) has no truncation "
                   "input; --psi applies to generators such as stylegan2\n")  # fmt: skip
    assert not out.exists()


# -- /v1/generate -----------------------------------------------------------------------------------------------------


def npy(res: httpx.Response) -> np.ndarray:
    assert res.status_code == 200, res.text
    return np.load(io.BytesIO(res.content))


def test_service_takes_truncation_psi_as_ganpipe_generate_does(psi_url, psi_model):
    meta = httpx.get(f"{psi_url}/v1/model").json()
    assert meta["truncation"] is True and meta["inputs"] == ["z", "labels", "truncation_psi"]
    g = OnnxGenerator(psi_model)
    post = lambda **body: httpx.post(f"{psi_url}/v1/generate", json={"format": "npy", **body})  # noqa: E731
    half = npy(post(n=4, seed=2, labels=["dog"], truncation_psi=0.5))
    np.testing.assert_array_equal(half, g.generate(4, 2, ["dog"], truncation_psi=0.5))
    default = npy(post(n=4, seed=2, labels=["dog"]))
    np.testing.assert_array_equal(npy(post(n=4, seed=2, labels=["dog"], truncation_psi=None)), default)
    np.testing.assert_array_equal(npy(post(n=4, seed=2, labels=["dog"], truncation_psi=1)), default)
    assert distance(half, default).min() > 1e-3
    zero = npy(post(seeds=[1, 2, 3], truncation_psi=0))  # a list of seeds: each truncated as well
    assert np.abs(zero - zero[:1]).max() < 1e-6
    png = httpx.post(f"{psi_url}/v1/generate", json={"n": 2, "truncation_psi": 0.5})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "body, problem",
    [
        (b'{"n": 2, "truncation_psi": NaN}', "finite number"),  # Python's JSON parser reads NaN and Infinity
        (b'{"n": 2, "truncation_psi": Infinity}', "finite number"),
        (b'{"n": 2, "truncation_psi": -Infinity}', "finite number"),
        (b'{"n": 2, "truncation_psi": 1e300}', "less than or equal to 100"),
        (b'{"n": 2, "truncation_psi": "0.5"}', "valid number"),
        (b'{"n": 2, "truncation_psi": [0.5]}', "valid number"),
    ],
    ids=["nan", "inf", "-inf", "huge", "string", "list"],
)
def test_service_refuses_a_psi_that_is_not_a_finite_number_with_422_naming_the_field(psi_url, body, problem):
    res = httpx.post(f"{psi_url}/v1/generate", content=body, headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["error"] == "invalid request", res.text
    [detail] = res.json()["detail"]
    assert detail["field"] == "truncation_psi" and problem in detail["problem"], detail
    assert httpx.get(f"{psi_url}/healthz").status_code == 200


def test_service_refuses_psi_for_a_model_without_truncation_with_400_naming_the_field(dcgan_url):
    meta = httpx.get(f"{dcgan_url}/v1/model").json()
    assert meta["truncation"] is False and meta["inputs"] == ["z", "labels"]
    for body in ({"n": 2, "truncation_psi": 0.5}, {"seeds": [1, 2], "truncation_psi": 1}):
        res = httpx.post(f"{dcgan_url}/v1/generate", json=body)
        assert res.status_code == 400 and res.json()["error"] == "bad truncation_psi", res.text
        assert res.json()["detail"].startswith("truncation_psi: the served model (arch dcgan) has no truncation")
    assert httpx.post(f"{dcgan_url}/v1/generate", json={"n": 2, "truncation_psi": None}).status_code == 200


def test_the_schema_states_the_truncation_psi_the_served_model_takes(psi_url, dcgan_url):
    def field(url: str) -> dict:
        schema = httpx.get(f"{url}/openapi.json").json()
        return schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"]["truncation_psi"]  # fmt: skip

    number, null = field(psi_url)["anyOf"]
    assert number == {"type": "number", "minimum": -100, "maximum": 100} and null == {"type": "null"}
    assert field(dcgan_url)["type"] == "null"  # a number is refused (400): the schema says so


# -- the Open Inference Protocol --------------------------------------------------------------------------------------


def test_oip_metadata_lists_truncation_psi_only_for_a_model_that_takes_it(psi_url, dcgan_url):
    inputs = client(psi_url).get_model_metadata("ganpipe")["inputs"]
    assert inputs == [{"name": "z", "datatype": "FP32", "shape": [-1, 8]},
                      {"name": "labels", "datatype": "INT64", "shape": [-1]},
                      {"name": "truncation_psi", "datatype": "FP32", "shape": [-1]}]  # fmt: skip
    assert "truncation_psi" not in json.dumps(client(dcgan_url).get_model_metadata("ganpipe"))


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_oip_infer_with_truncation_psi_matches_ganpipe_generate(psi_url, psi_model, binary):
    g, c = OnnxGenerator(psi_model), client(psi_url)
    labels = g.resolve_labels(4, None)
    base = [tensor("z", latent(4, 7), "FP32", binary), tensor("labels", labels, "INT64", binary)]
    one = np.array([0.5], np.float32)
    got = c.infer("ganpipe", [*base, tensor("truncation_psi", one, "FP32", binary)]).as_numpy("images")
    np.testing.assert_array_equal(got, g.generate(4, 7, truncation_psi=0.5))
    np.testing.assert_array_equal(c.infer("ganpipe", base).as_numpy("images"), g.generate(4, 7))  # left out: none
    each = np.array([0.0, 1.0, 0.5, 0.0], np.float32)  # one per sample
    got = c.infer("ganpipe", [*base, tensor("truncation_psi", each, "FP32", binary)]).as_numpy("images")
    for i, psi in enumerate(each):
        np.testing.assert_allclose(got[i], g.generate(4, 7, truncation_psi=float(psi))[i], atol=1e-6)


PSI_CASES = [
    (np.array([0.5, 0.5, 0.5], np.float32), "FP32", "psi", ["wrong shape", "input 'truncation_psi'", "got 3"]),
    (np.array([np.nan], np.float32), "FP32", "psi", ["bad data", "input 'truncation_psi'", "NaN"]),
    (np.array([1e6], np.float32), "FP32", "psi", ["bad data", "input 'truncation_psi'", "-100 to 100"]),
    (np.array([0.5], np.float64), "FP64", "psi", ["wrong datatype", "input 'truncation_psi'", "FP32"]),
    (np.array([[0.5]], np.float32), "FP32", "psi", ["wrong shape", "input 'truncation_psi'"]),
    (np.array([0.5], np.float32), "FP32", "dcgan", ["unknown input", "'truncation_psi'", "['z', 'labels']"]),
]


@pytest.mark.parametrize("psi, datatype, server, words", PSI_CASES,
                         ids=["3-for-4", "nan", "huge", "fp64", "rank-2", "model-without-it"])  # fmt: skip
def test_oip_refuses_a_bad_truncation_psi_with_400_naming_the_input(psi_url, dcgan_url, psi, datatype, server, words):
    url = psi_url if server == "psi" else dcgan_url
    inputs = [tensor("z", latent(4, 0), "FP32"), tensor("labels", np.arange(4, dtype=np.int64) % 3, "INT64"),
              tensor("truncation_psi", psi, datatype)]  # fmt: skip
    with pytest.raises(InferenceServerException) as err:
        client(url).infer("ganpipe", inputs)
    assert err.value.status() == "400" and "\n" not in err.value.message()
    assert all(w in err.value.message() for w in words), err.value.message()
    assert client(url).is_server_ready()


# -- Triton -----------------------------------------------------------------------------------------------------------


def test_triton_config_declares_truncation_psi_optional_and_batched(psi_model, tmp_path):
    assert ganpipe(["export-triton", "--model", str(psi_model), "--out", str(tmp_path), "--max-batch-size", "6"]) == 0
    folder = tmp_path / "generator"
    cfg = load_config(folder)  # Triton's own schema: `optional` is a field of ModelInput
    assert [(t.name, t.optional) for t in cfg.input] == [("z", False), ("labels", False), ("truncation_psi", True)]
    psi = cfg.input[2]
    assert psi.data_type == mc.TYPE_FP32 and list(psi.dims) == [1] and list(psi.reshape.shape) == []
    assert "optional: true" in (folder / "config.pbtxt").read_text()
    assert_matches_model(cfg, folder / "1" / "model.onnx")
    for n in (1, 6):  # a truncation_psi per sample, shaped [n, 1] by the client and [n] after Triton's reshape
        run_both(cfg, folder, psi_model, n)
    # left out, as Triton runs a request without the optional input: the file's default, no truncation
    z, labels = latent(3, 0), np.array([0, 1, 2], np.int64)
    without = session(folder / "1" / "model.onnx").run(["images"], {"z": z, "labels": labels})[0]
    np.testing.assert_array_equal(without, OnnxGenerator(psi_model).generate(3, 0))


def test_triton_config_of_a_model_without_truncation_has_no_optional_input(models, tmp_path):  # noqa: F811
    assert ganpipe(["export-triton", "--model", str(models["generate"]), "--out", str(tmp_path)]) == 0
    cfg = load_config(tmp_path / "generator")
    assert [(t.name, t.optional) for t in cfg.input] == [("z", False), ("labels", False)]
    assert "optional" not in (tmp_path / "generator" / "config.pbtxt").read_text()
