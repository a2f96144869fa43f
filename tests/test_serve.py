"""`ganpipe serve` over real connections on 127.0.0.1: every endpoint, every bad request,
the bearer token, Prometheus metrics, and the champion swap while a request is in flight."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from test_export import save_generator

from pipeline.export import export_generator, export_translators
from pipeline.registry import Registry
from pipeline.serve.app import ServeConfig, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(cfg: ServeConfig):
    """The app under a real uvicorn server in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def tiny_translator(root: Path) -> Path:
    """A trained-shape CycleGAN translator exported by the pipeline's own export code."""
    from pipeline.config import ModelConfig
    from pipeline.training.translate import build_translator, directions

    cfg = ModelConfig(arch="cyclegan", g_channels=4, n_blocks=1)
    torch.manual_seed(0)
    state = {d: build_translator(cfg, 16, 1).state_dict() for d in directions("cyclegan")}
    spec = {"task": "translate", "model": cfg.model_dump(mode="json"), "image_size": 16, "channels": 1,
            "directions": ["AB", "BA"], "size_multiple": 4, "min_size": 8, "num_classes": 0,
            "class_names": []}  # fmt: skip
    torch.save({"spec": spec, "state_dicts": state, "steps": 0}, root / "t.pt")
    export_translators(root / "t.pt", root / "exports")
    return root / "exports" / "generator_AB.onnx"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    gen = root / "conditional.onnx"
    export_generator(save_generator(root / "g.pt", conditional=True, classes=("cat", "dog", "owl")), gen)
    plain = root / "plain.onnx"
    export_generator(save_generator(root / "p.pt"), plain)
    return {"generate": gen, "plain": plain, "translate": tiny_translator(root)}


@pytest.fixture(scope="module")
def gen_url(models):
    with running(ServeConfig(model=models["generate"], max_n=32)) as url:
        yield url


def png_of(size=(20, 12), color=128, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_health_model_metadata_and_page(gen_url):
    assert httpx.get(f"{gen_url}/healthz").json()["status"] == "ok"
    meta = httpx.get(f"{gen_url}/v1/model").json()
    assert meta["task"] == "generate" and meta["class_names"] == ["cat", "dog", "owl"]
    assert meta["metadata"]["ganpipe.latent_dim"] == "8" and meta["limits"]["max_n"] == 32
    page = httpx.get(f"{gen_url}/")
    assert page.status_code == 200 and "<script" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing from a CDN


def test_generate_png_is_deterministic_per_seed_and_honours_labels(gen_url):
    a = httpx.post(f"{gen_url}/v1/generate", json={"n": 4, "seed": 7, "labels": ["dog"]})
    b = httpx.post(f"{gen_url}/v1/generate", json={"n": 4, "seed": 7, "labels": ["dog"]})
    c = httpx.post(f"{gen_url}/v1/generate", json={"n": 4, "seed": 8, "labels": ["dog"]})
    assert a.status_code == 200 and a.headers["content-type"] == "image/png"
    assert a.content == b.content != c.content
    assert Image.open(io.BytesIO(a.content)).size[0] > 16
    arr = np.load(io.BytesIO(httpx.post(f"{gen_url}/v1/generate", json={"n": 3, "format": "npy"}).content))
    assert arr.shape == (3, 1, 16, 16) and np.abs(arr).max() <= 1
    as_json = httpx.post(f"{gen_url}/v1/generate", json={"n": 2, "format": "json", "labels": [1]}).json()
    assert as_json["shape"] == [2, 1, 16, 16]


@pytest.mark.parametrize(
    "body, status, error",
    [
        (b"{not json", 400, "malformed JSON"),
        (json.dumps({"n": "four"}).encode(), 422, "invalid request"),
        (json.dumps({"n": 0}).encode(), 422, "invalid request"),
        (json.dumps({"n": 33}).encode(), 422, "invalid request"),
        (json.dumps({"n": 2, "labels": ["unicorn"]}).encode(), 400, "bad labels"),
        (json.dumps({"n": 2, "colour": "red"}).encode(), 422, "invalid request"),
        (json.dumps({"n": 2, "format": "gif"}).encode(), 422, "invalid request"),
    ],
    ids=["malformed", "wrong-type", "n-zero", "n-too-big", "unknown-label", "unknown-field", "bad-format"],
)
def test_bad_generate_requests_get_4xx_json_and_the_service_keeps_serving(gen_url, body, status, error):
    res = httpx.post(f"{gen_url}/v1/generate", content=body, headers={"content-type": "application/json"})
    assert res.status_code == status and res.json()["error"] == error, res.text
    assert res.json()["detail"]
    assert httpx.get(f"{gen_url}/healthz").status_code == 200


def test_translate_on_a_generator_is_a_conflict(gen_url):
    res = httpx.post(f"{gen_url}/v1/translate", content=png_of(), headers={"content-type": "image/png"})
    assert res.status_code == 409 and "use /v1/generate" in res.json()["detail"]


def test_metrics_count_requests_by_endpoint_and_status(gen_url):
    httpx.post(f"{gen_url}/v1/generate", json={"n": 0})
    text = httpx.get(f"{gen_url}/metrics").text
    assert 'ganpipe_requests_total{endpoint="/v1/generate",status="422"}' in text
    assert 'ganpipe_requests_total{endpoint="/v1/generate",status="200"}' in text
    assert 'ganpipe_request_seconds_bucket{endpoint="/v1/generate",le="0.005"}' in text


@pytest.fixture(scope="module")
def tr_url(models):
    with running(ServeConfig(model=models["translate"], max_upload_bytes=50_000, max_pixels=100_000)) as url:
        yield url


def test_translate_returns_a_png_of_the_input_size(tr_url):
    res = httpx.post(f"{tr_url}/v1/translate", content=png_of((20, 12)), headers={"content-type": "image/png"})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(res.content)).size == (20, 12)
    assert httpx.get(f"{tr_url}/v1/model").json()["size_multiple"] == 4


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (2000, 2000)).save(buf, format="PNG")  # 4 M pixels in a few hundred bytes
    return buf.getvalue()


@pytest.mark.parametrize(
    "body, ctype, status, error",
    [
        (png_of(), "application/json", 415, "unsupported content type"),
        (png_of(), "", 415, "unsupported content type"),
        (b"GIF89a this is no image", "image/gif", 400, "not an image"),
        (b"", "image/png", 400, "empty body"),
        (bomb(), "image/png", 413, "image too large"),
        (b"\0" * 60_000, "image/png", 413, "upload too large"),
    ],
    ids=["wrong-type", "no-type", "not-image", "empty", "bomb", "too-many-bytes"],
)
def test_bad_uploads_get_4xx_json_and_the_service_keeps_serving(tr_url, body, ctype, status, error):
    headers = {"content-type": ctype} if ctype else {}
    res = httpx.post(f"{tr_url}/v1/translate", content=body, headers=headers)
    assert res.status_code == status and res.json()["error"] == error, res.text
    assert httpx.get(f"{tr_url}/healthz").status_code == 200


def test_generate_on_a_translator_is_a_conflict(tr_url):
    assert httpx.post(f"{tr_url}/v1/generate", json={"n": 1}).status_code == 409


def test_bearer_token_guards_the_api_but_not_health(models, monkeypatch):
    monkeypatch.setenv("GANPIPE_SERVE_TOKEN", "s3cret")
    with running(ServeConfig(model=models["generate"])) as url:
        assert httpx.post(f"{url}/v1/generate", json={"n": 1}).status_code == 401
        assert httpx.get(f"{url}/v1/model", headers={"authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.post(f"{url}/v1/generate", json={"n": 1}, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200


def promote_file(reg: Registry, work: Path, onnx: Path) -> str:
    (work / "exports").mkdir(parents=True, exist_ok=True)
    (work / "metrics").mkdir(exist_ok=True)
    for old in (work / "exports").glob("*.onnx"):
        old.unlink()
    shutil.copy(onnx, work / "exports" / "generator.onnx")
    (work / "exports" / "model_card.json").write_text("{}")
    (work / "metrics" / "eval.json").write_text('{"fid": 1.0}')
    (work / "metrics" / "export.json").write_text('{"parity_passed": true}')
    (work / "params.yaml").write_text("seed: 0\n")
    (work / "dvc.lock").write_text("schema: '2.0'\n")
    return reg.promote(work, git_rev="test")


def test_champion_change_is_picked_up_without_dropping_a_request_in_flight(tmp_path, models):
    reg = Registry(tmp_path / "registry")
    promote_file(reg, tmp_path / "w1", models["plain"])
    cfg = ServeConfig(registry=tmp_path / "registry", reload_check_s=0.0, max_n=4096)
    with running(cfg) as url:
        assert httpx.get(f"{url}/v1/model").json()["num_classes"] == 0
        results = {}

        def long_request():  # a big batch on the old champion, still running during the swap
            results["big"] = httpx.post(f"{url}/v1/generate", json={"n": 4096, "format": "npy"}, timeout=120)

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(0.05)
        promote_file(reg, tmp_path / "w2", models["generate"])  # the conditional model becomes champion
        time.sleep(0.05)
        meta = httpx.get(f"{url}/v1/model").json()
        t.join(timeout=120)
        assert meta["num_classes"] == 3 and meta["file"] == "generator.onnx"
        assert results["big"].status_code == 200
        assert np.load(io.BytesIO(results["big"].content)).shape == (4096, 1, 16, 16)
        assert httpx.post(f"{url}/v1/generate", json={"n": 2, "labels": ["owl"]}).status_code == 200
