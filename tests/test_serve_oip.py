"""The Open Inference Protocol v2 of `ganpipe serve`, spoken by Triton's own client
(tritonclient.http) to a real uvicorn on 127.0.0.1: health, metadata, and inference whose tensors
are exactly those of the ONNX model run directly, in JSON and in the binary tensor extension; and
every refusal as one line naming what is wrong, with the limits, token and admission of /v1."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from test_serve import models, promote_file, running  # noqa: F401  (models: the fixture)
from test_serve_faults import inference_held, post_in_thread
from tritonclient.utils import InferenceServerException

from pipeline.inference import OnnxGenerator, OnnxTranslator
from pipeline.registry import Registry
from pipeline.serve.app import ServeConfig, create_app


def client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def latent(n: int, seed: int) -> np.ndarray:
    """The z that OnnxGenerator.generate (and so `ganpipe generate`) draws for n images from seed."""
    return np.random.default_rng(seed).standard_normal((n, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def gen_url(models):  # noqa: F811
    with running(ServeConfig(model=models["generate"], max_n=8)) as url:
        yield url


def test_health_and_metadata_through_tritonclient(gen_url):
    c = client(gen_url)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("ganpipe")
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert c.get_model_metadata("ganpipe") == {
        "name": "ganpipe",
        "versions": ["conditional.onnx"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "z", "datatype": "FP32", "shape": [-1, 8]},
                   {"name": "labels", "datatype": "INT64", "shape": [-1]}],
        "outputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 16, 16]}],
    }  # fmt: skip
    assert not c.is_model_ready("other")
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata("other")
    assert err.value.status() == "404" and "'other'" in err.value.message()
    missing = httpx.get(f"{gen_url}/v2/models/other")
    assert missing.json() == {"error": "unknown model: 'other'; this server serves 'ganpipe'"}


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_infer_gives_exactly_the_tensor_of_the_onnx_model_and_of_ganpipe_generate(gen_url, models, binary):  # noqa: F811
    labels = np.array([2, 0, 1, 2], dtype=np.int64)
    inputs = [tensor("z", latent(4, 7), "FP32", binary), tensor("labels", labels, "INT64", binary)]
    outputs = [triton.InferRequestedOutput("images", binary_data=binary)]
    result = client(gen_url).infer("ganpipe", inputs, outputs=outputs, request_id="r-7")
    got = result.as_numpy("images")
    assert got.dtype == np.float32 and got.shape == (4, 1, 16, 16)
    direct = ort.InferenceSession(str(models["generate"])).run(["images"], {"z": latent(4, 7), "labels": labels})[0]
    np.testing.assert_array_equal(got, direct)
    np.testing.assert_array_equal(got, OnnxGenerator(models["generate"]).generate(4, 7, ["owl", "cat", "dog"]))
    response = result.get_response()
    assert response["id"] == "r-7" and response["model_name"] == "ganpipe"
    assert response["model_version"] == "conditional.onnx"
    assert ("parameters" in response["outputs"][0]) is binary  # binary_data_size: the bytes follow the JSON


def test_plain_json_request_gets_every_output_as_json(models):  # noqa: F811
    with running(ServeConfig(model=models["plain"])) as url:
        body = {"inputs": [{"name": "z", "shape": [2, 8], "datatype": "FP32", "data": latent(2, 3).tolist()}]}
        res = httpx.post(f"{url}/v2/models/ganpipe/infer", json=body)
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"
    out = res.json()["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in out] == [("images", "FP32", [2, 1, 16, 16])]
    expected = OnnxGenerator(models["plain"]).generate(2, 3)
    np.testing.assert_array_equal(np.array(out[0]["data"], dtype=np.float32).reshape(2, 1, 16, 16), expected)
    assert "id" not in res.json()


def test_a_translator_through_tritonclient(models):  # noqa: F811
    images = np.random.default_rng(0).uniform(-1, 1, (2, 1, 12, 20)).astype(np.float32)
    with running(ServeConfig(model=models["translate"], max_pixels=1000)) as url:
        c = client(url)
        meta = c.get_model_metadata("ganpipe")
        assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
        assert [o["name"] for o in meta["outputs"]] == ["translated"]
        got = c.infer("ganpipe", [tensor("images", images, "FP32")]).as_numpy("translated")
        np.testing.assert_array_equal(got, OnnxTranslator(models["translate"]).translate(images))
        for shape, status, problem in (((1, 1, 10, 20), "400", "multiples of 4"),
                                       ((3, 1, 12, 32), "413", "3 x 12x32 pixels > 1000")):  # fmt: skip
            with pytest.raises(InferenceServerException) as err:
                c.infer("ganpipe", [tensor("images", np.zeros(shape, np.float32), "FP32")])
            assert err.value.status() == status and "input 'images'" in err.value.message()
            assert problem in err.value.message()


def z_input(data, shape=(2, 8), datatype="FP32", **extra) -> dict:
    return {"name": "z", "shape": list(shape), "datatype": datatype, "data": data, **extra}


LABELS = {"name": "labels", "shape": [2], "datatype": "INT64", "data": [0, 1]}
Z = latent(2, 0).tolist()


@pytest.mark.parametrize(
    "body, words",
    [
        ({"inputs": [z_input(Z)]}, ["missing input", "'labels'"]),
        ({"inputs": [z_input(Z), LABELS, {**LABELS, "name": "y"}]}, ["unknown input", "'y'"]),
        (
            {"inputs": [z_input(Z), LABELS, {"name": "truncation_psi", "shape": [1], "datatype": "FP32", "data": [1]}]},
            ["unknown input", "'truncation_psi'", "['z', 'labels']"],  # a dcgan takes no truncation_psi
        ),
        ({"inputs": [z_input(Z), LABELS, LABELS]}, ["given twice", "'labels'"]),
        ({"inputs": [z_input(Z, (2, 7)), LABELS]}, ["wrong shape", "input 'z'", "[-1, 8]", "[2, 7]"]),
        ({"inputs": [z_input(Z, (16,)), LABELS]}, ["wrong shape", "input 'z'"]),
        ({"inputs": [z_input(Z, datatype="FP64"), LABELS]}, ["wrong datatype", "input 'z'", "FP32"]),
        ({"inputs": [z_input(Z), {**LABELS, "data": [0, 3]}]}, ["bad labels", "input 'labels'", "0-2"]),
        ({"inputs": [z_input(Z), {**LABELS, "shape": [3], "data": [0, 1, 2]}]}, ["input 'labels'", "'batch'"]),
        ({"inputs": [z_input(Z[:1]), LABELS]}, ["bad data", "input 'z'", "16 FP32 values", "got 8"]),
        ({"inputs": [z_input([[1.0], [2.0, 3.0]]), LABELS]}, ["input 'z'", "not a regular array"]),
        ({"inputs": [z_input([["a"] * 8] * 2), LABELS]}, ["bad data", "input 'z'"]),
        ({"inputs": [z_input([[float("nan")] * 8] * 2), LABELS]}, ["input 'z'", "NaN"]),
        ({"inputs": [z_input(Z), {**LABELS, "data": [0.5, 1]}]}, ["bad data", "input 'labels'", "INT64"]),
        ({"inputs": [z_input(None), LABELS]}, ["missing data", "input 'z'"]),
        (
            {"inputs": [z_input(latent(9, 0).tolist(), (9, 8)), {**LABELS, "shape": [9], "data": [0] * 9}]},
            ["batch too large", "input 'z'", "8"],
        ),
        ({"inputs": [z_input(Z), LABELS], "outputs": [{"name": "logits"}]}, ["unknown output", "'logits'"]),
        ({"inputs": [z_input(Z, parameters={"binary_data_size": 64}), LABELS]}, ["bad binary data", "input 'z'"]),
        ({"inputs": [{"name": "z", "shape": "2x8", "datatype": "FP32"}]}, ["invalid request", "inputs.0.shape"]),
        ({"inputs": []}, ["invalid request", "inputs"]),
    ],
    ids=str.split(
        "missing-input unknown-input psi-without-truncation repeated-input wrong-dims wrong-rank wrong-datatype "
        "label-out-of-range batch-mismatch too-few-values ragged strings nan float-labels no-data batch-over-max-n "
        "unknown-output binary-size-without-bytes shape-not-a-list no-inputs"
    ),
)
def test_bad_inference_requests_get_400_with_one_line_naming_the_problem(gen_url, body, words):
    res = httpx.post(f"{gen_url}/v2/models/ganpipe/infer", content=json.dumps(body).encode())
    assert res.status_code == 400, res.text
    assert list(res.json()) == ["error"] and "\n" not in res.json()["error"], res.text
    assert all(w in res.json()["error"] for w in words), res.json()["error"]
    assert client(gen_url).is_server_ready()  # and the service goes on


def test_unknown_model_and_malformed_bodies(gen_url):
    unknown = httpx.post(f"{gen_url}/v2/models/nope/infer", json={"inputs": [z_input(Z), LABELS]})
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "unknown model: 'nope'; this server serves 'ganpipe'"}
    for body, headers, words in (
        (b"{nope", {}, "malformed JSON"),
        (b'{"inputs": []}', {"inference-header-content-length": "99"}, "Inference-Header-Content-Length '99'"),
    ):
        res = httpx.post(f"{gen_url}/v2/models/ganpipe/infer", content=body, headers=headers)
        assert res.status_code == 400 and words in res.json()["error"], res.text
    wrong_method = httpx.get(f"{gen_url}/v2/models/ganpipe/infer")
    assert wrong_method.status_code == 405 and list(wrong_method.json()) == ["error"]


def test_the_token_guards_metadata_and_inference_but_not_health(models, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GANPIPE_SERVE_TOKEN", "s3cret")
    with running(ServeConfig(model=models["plain"])) as url:
        c = client(url)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("ganpipe")
        with pytest.raises(InferenceServerException) as err:
            c.get_model_metadata("ganpipe")
        assert err.value.status() == "401" and "Bearer" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            c.infer("ganpipe", [tensor("z", latent(1, 0), "FP32")])
        assert err.value.status() == "401"
        good = c.infer("ganpipe", [tensor("z", latent(1, 0), "FP32")], headers={"Authorization": "Bearer s3cret"})
        np.testing.assert_array_equal(good.as_numpy("images"), OnnxGenerator(models["plain"]).generate(1, 0))


def test_inference_shares_the_admission_of_v1_and_gets_503_with_retry_after(models):  # noqa: F811
    app, results = create_app(ServeConfig(model=models["plain"], max_concurrency=1, max_queue=0)), {}
    with running(app) as url, inference_held(app) as (entered, release):
        t = post_in_thread(url, {"n": 1}, results)
        try:
            assert entered.wait(20), "the /v1 request's inference did not start"
            refused = httpx.post(f"{url}/v2/models/ganpipe/infer", json={"inputs": [z_input(Z)]})
        finally:
            release.set()
            t.join(timeout=60)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert list(refused.json()) == ["error"] and "overloaded" in refused.json()["error"]
        assert results["slow"].status_code == 200
        assert httpx.post(f"{url}/v2/models/ganpipe/infer", json={"inputs": [z_input(Z)]}).status_code == 200


def test_live_but_not_ready_until_a_champion_is_promoted(tmp_path, models):  # noqa: F811
    reg = Registry(tmp_path / "registry")
    with running(ServeConfig(registry=tmp_path / "registry")) as url:
        c = client(url)
        assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready("ganpipe")
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503 and "no champion" in ready.json()["error"] and ready.headers["retry-after"]
        assert httpx.get(f"{url}/healthz").json()["model"] is None
        generate = httpx.post(f"{url}/v1/generate", json={"n": 1})
        assert generate.status_code == 503 and generate.json()["error"] == "no model loaded"
        assert httpx.get(f"{url}/openapi.json").status_code == 200
        promote_file(reg, tmp_path / "w1", models["plain"])
        assert c.is_server_ready() and c.is_model_ready("ganpipe")
        result = c.infer("ganpipe", [tensor("z", latent(3, 5), "FP32")])
        np.testing.assert_array_equal(result.as_numpy("images"), OnnxGenerator(models["plain"]).generate(3, 5))
        assert result.get_response()["model_version"] == "v0001"
