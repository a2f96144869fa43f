"""`ganpipe serve` over real connections on 127.0.0.1: every endpoint, every bad request,
the bearer token, Prometheus metrics, and the champion swap while a request is in flight."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_export import REPO, save_generator

from pipeline.export import export_generator
from pipeline.inference import OnnxGenerator
from pipeline.registry import Registry
from pipeline.serve.app import ServeConfig, create_app, server_config

sys.path.insert(0, str(REPO / "bench"))
from load import small_translator as tiny_translator  # the benchmarks' translator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(cfg: ServeConfig | FastAPI):
    """The app (or the app of a config) under a real uvicorn server in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    app = cfg if isinstance(cfg, FastAPI) else create_app(cfg)
    server = uvicorn.Server(server_config(app, port=port, log_level="warning"))  # as `ganpipe serve` configures it
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


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exported once per test session (per xdist worker), though the serve test modules that import
    this fixture each get their own: the three exports take ~15 s on 2 cores."""
    root = tmp_path_factory.getbasetemp() / "serve-models"
    found = {"generate": root / "conditional.onnx", "plain": root / "plain.onnx",
             "translate": root / "exports" / "generator_AB.onnx"}  # fmt: skip
    if not (root / "complete").exists():
        root.mkdir(exist_ok=True)
        conditional = save_generator(root / "g.pt", conditional=True, classes=("cat", "dog", "owl"))
        export_generator(conditional, found["generate"])
        export_generator(save_generator(root / "p.pt"), found["plain"])
        assert tiny_translator(root) == found["translate"]
        (root / "complete").touch()
    return found


@pytest.fixture(scope="module")
def gen_url(models):
    with running(ServeConfig(model=models["generate"], max_n=32)) as url:
        yield url


def request_counts(url: str) -> dict[tuple[str, str], float]:
    """ganpipe_requests_total by (endpoint, status), read from /metrics with Prometheus' own parser."""
    counts = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == "ganpipe_requests_total":
                counts[(s.labels["endpoint"], s.labels["status"])] = s.value
            elif s.name == "ganpipe_request_seconds_count":
                counts[(s.labels["endpoint"], "latency observations")] = s.value
            elif s.name == "ganpipe_model_reloads_total":
                counts[("reload", s.labels["result"])] = s.value
    return counts


def grew(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def png_of(size=(20, 12), color=128, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_health_model_metadata_and_page(gen_url):
    assert httpx.get(f"{gen_url}/healthz").json()["status"] == "ok"
    meta = httpx.get(f"{gen_url}/v1/model").json()
    assert meta["task"] == "generate" and meta["class_names"] == ["cat", "dog", "owl"]
    assert meta["metadata"]["ganpipe.latent_dim"] == "8" and meta["limits"]["max_n"] == 32
    assert meta["inputs"] == ["z", "labels"] and meta["truncation"] is False  # dcgan: no truncation_psi
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
        (json.dumps({"n": 2, "truncation_psi": 0.5}).encode(), 400, "bad truncation_psi"),  # a dcgan: no truncation
        (b'{"n": 2, "truncation_psi": NaN}', 422, "invalid request"),
        (json.dumps({"n": 2, "colour": "red"}).encode(), 422, "invalid request"),
        (json.dumps({"n": 2, "format": "gif"}).encode(), 422, "invalid request"),
        (json.dumps({"n": 2, "seed": -1}).encode(), 422, "invalid request"),
        (json.dumps([{"n": 2}]).encode(), 422, "invalid request"),
        (json.dumps({"n": 2, "labels": ["cat"] * 400_000}).encode(), 413, "upload too large"),
        (("text/plain", b'{"n": 2}'), 415, "unsupported content type"),
    ],
    ids=str.split(
        "malformed wrong-type n-zero n-too-big unknown-label psi-without-truncation psi-nan unknown-field bad-format "
        "negative-seed not-an-object body-too-large wrong-content-type"
    ),
)
def test_bad_generate_requests_get_4xx_json_and_the_service_keeps_serving(gen_url, body, status, error):
    ctype, body = body if isinstance(body, tuple) else ("application/json", body)
    res = httpx.post(f"{gen_url}/v1/generate", content=body, headers={"content-type": ctype})
    assert res.status_code == status and res.json()["error"] == error, res.text
    assert res.json()["detail"]
    assert httpx.get(f"{gen_url}/healthz").status_code == 200


def test_generate_takes_a_list_of_seeds_each_as_that_seed_alone_gives_it(gen_url, models):
    res = httpx.post(f"{gen_url}/v1/generate", json={"seeds": [5, 0, 2**63 - 1], "labels": ["owl", 0], "format": "npy"})
    assert res.status_code == 200 and res.headers["x-seed"] == f"5,0,{2**63 - 1}"
    model = OnnxGenerator(models["generate"])
    alone = [model.generate(1, 5, ["owl"]), model.generate(1, 0, [0]), model.generate(1, 2**63 - 1, ["owl"])]
    np.testing.assert_array_equal(np.load(io.BytesIO(res.content)), np.concatenate(alone))
    one = httpx.post(f"{gen_url}/v1/generate", json={"seeds": [5], "labels": ["owl"], "format": "npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(one.content)), alone[0])
    for seeds in ([], [-1], list(range(33)), ["1"]):
        res = httpx.post(f"{gen_url}/v1/generate", json={"seeds": seeds})
        assert res.status_code == 422 and res.json()["detail"][0]["field"].startswith("seeds"), res.text


def test_generate_takes_json_sent_as_curl_d_sends_it(gen_url):
    """`curl -d '{"n": 4}'` sends Content-Type application/x-www-form-urlencoded."""
    as_json = httpx.post(f"{gen_url}/v1/generate", json={"n": 4, "seed": 9})
    form = {"content-type": "application/x-www-form-urlencoded"}
    as_curl = httpx.post(f"{gen_url}/v1/generate", content=b'{"n": 4, "seed": 9}', headers=form)
    assert as_curl.status_code == 200 and as_curl.content == as_json.content
    curl = shutil.which("curl")
    if curl:  # curl itself, where it is installed
        out = subprocess.run([curl, "-sS", "-d", '{"n": 4, "seed": 9}', f"{gen_url}/v1/generate"], capture_output=True)
        assert out.stdout == as_json.content
    bad = httpx.post(f"{gen_url}/v1/generate", content=b"n=4&seed=9", headers=form)
    assert bad.status_code == 400 and bad.json()["error"] == "malformed JSON"


def test_translate_on_a_generator_is_a_conflict(gen_url):
    res = httpx.post(f"{gen_url}/v1/translate", content=png_of(), headers={"content-type": "image/png"})
    assert res.status_code == 409 and "use /v1/generate" in res.json()["detail"]


def test_unknown_paths_and_methods_get_json_errors_too(gen_url):
    missing = httpx.get(f"{gen_url}/v2/generate")
    assert missing.status_code == 404 and missing.json()["error"] == "not found"
    wrong = httpx.get(f"{gen_url}/v1/generate")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method not allowed"
    assert wrong.headers["allow"] == "POST"


def test_metrics_count_exactly_the_requests_made(gen_url):
    before = request_counts(gen_url)
    for seed in range(3):
        assert httpx.post(f"{gen_url}/v1/generate", json={"n": 2, "seed": seed}).status_code == 200
    for n in (0, 99):
        assert httpx.post(f"{gen_url}/v1/generate", json={"n": n}).status_code == 422
    assert httpx.get(f"{gen_url}/v1/model").status_code == 200
    assert httpx.get(f"{gen_url}/no/such/page").status_code == 404
    assert grew(before, request_counts(gen_url)) == {
        ("/v1/generate", "200"): 3,
        ("/v1/generate", "422"): 2,
        ("/v1/generate", "latency observations"): 5,
        ("/v1/model", "200"): 1,
        ("/v1/model", "latency observations"): 1,
        ("other", "404"): 1,  # unknown paths share one label: clients cannot mint new series
        ("other", "latency observations"): 1,
        ("/metrics", "200"): 1,  # the first scrape, counted once it was answered
        ("/metrics", "latency observations"): 1,
    }
    text = httpx.get(f"{gen_url}/metrics").text
    assert 'ganpipe_request_seconds_bucket{endpoint="/v1/generate",le="0.005"}' in text


def test_concurrent_requests_share_the_session_and_get_the_same_images_as_one_at_a_time(gen_url):
    serial = {seed: httpx.post(f"{gen_url}/v1/generate", json={"n": 8, "seed": seed}).content for seed in range(8)}
    results: dict[int, bytes] = {}

    def fetch(seed: int) -> None:
        with httpx.Client() as client:
            for _ in range(3):
                res = client.post(f"{gen_url}/v1/generate", json={"n": 8, "seed": seed})
                assert res.status_code == 200
                assert results.setdefault(seed, res.content) == res.content

    threads = [threading.Thread(target=fetch, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == serial


@pytest.fixture(scope="module")
def tr_url(models):
    with running(ServeConfig(model=models["translate"], max_upload_bytes=50_000, max_pixels=100_000)) as url:
        yield url


def test_translate_returns_a_png_of_the_input_size(tr_url):
    res = httpx.post(f"{tr_url}/v1/translate", content=png_of((20, 12)), headers={"content-type": "image/png"})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(res.content)).size == (20, 12)
    assert httpx.get(f"{tr_url}/v1/model").json()["size_multiple"] == 4


def test_translate_takes_a_multipart_upload_as_curl_f_sends_it(tr_url, tmp_path):
    picture = png_of((20, 12), color=90)
    raw = httpx.post(f"{tr_url}/v1/translate", content=picture, headers={"content-type": "image/png"})
    multipart = httpx.post(f"{tr_url}/v1/translate", files={"file": ("x.png", picture, "image/png")})
    assert multipart.status_code == 200 and multipart.content == raw.content
    curl = shutil.which("curl")
    if curl:  # curl itself, where it is installed
        (tmp_path / "x.png").write_bytes(picture)
        out = subprocess.run([curl, "-sS", "-F", f"file=@{tmp_path / 'x.png'}", f"{tr_url}/v1/translate"],
                             capture_output=True)  # fmt: skip
        assert out.stdout == raw.content


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"files": {"image": ("x.png", png_of(), "image/png")}}, 400, "'file'"),
        ({"data": {"file": "not a file"}, "files": {"other": ("a", b"a")}}, 400, "'file'"),
        ({"files": {"file": ("x.png", b"no image", "image/png")}}, 400, "not a PNG"),
        ({"files": {"file": ("x.png", b"", "image/png")}}, 400, "empty"),
        (
            {"files": {"file": ("x.png", png_of(), "image/png"), "more": ("y.png", png_of(), "image/png")}},
            400,
            "Too many files",
        ),
        ({"content": b"--x\r\nno headers", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
        ({"files": {"file": ("x.png", b"\0" * 60_000, "image/png")}}, 413, "bytes"),
    ],
    ids=["no-file-field", "file-as-text", "not-an-image", "empty-file", "two-files", "no-boundary", "too-large"],
)
def test_bad_multipart_uploads_get_4xx_naming_what_is_wrong(tr_url, kwargs, status, words):
    res = httpx.post(f"{tr_url}/v1/translate", **kwargs)
    assert res.status_code == status and words in json.dumps(res.json()), res.text
    assert httpx.get(f"{tr_url}/healthz").status_code == 200


def test_docs_are_swagger_ui_from_the_service_itself_built_from_its_schema(gen_url):
    page = httpx.get(f"{gen_url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and "url: '/openapi.json'" in page.text
    assert not re.findall(r"https?://", page.text)  # nothing loaded from another host
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {a.rsplit(".", 1)[1] for a in assets} == {"js", "css", "png"}
    for asset in assets:
        assert asset.startswith("/"), asset
        res = httpx.get(f"{gen_url}{asset}")
        assert res.status_code == 200 and len(res.content) > 1000, asset
        if asset.endswith(".css"):  # what a stylesheet loads: url(...) and @import other than inline data
            loads = re.findall(r"url\(\s*['\"]?([^'\")]+)|@import\s+['\"]([^'\"]+)", res.text)
            assert not [u for u in map("".join, loads) if not u.startswith("data:")], asset
    assert httpx.get(f"{gen_url}/openapi.json").json()["paths"]  # what the page renders (the browser test shows it)


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
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n", "image/eps", 400, "not an image"),
        (b"", "image/png", 400, "empty body"),
        (bomb(), "image/png", 413, "image too large"),
        (b"\0" * 60_000, "image/png", 413, "upload too large"),
    ],
    ids=["wrong-type", "no-type", "not-image", "postscript", "empty", "bomb", "too-many-bytes"],
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
        refused = httpx.post(f"{url}/v1/generate", json={"n": 1})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        for given in ("Bearer wrong", "s3cret", "Basic s3cret", "Bearer"):
            assert httpx.get(f"{url}/v1/model", headers={"authorization": given}).status_code == 401
        translate = httpx.post(f"{url}/v1/translate", content=png_of(), headers={"content-type": "image/png"})
        assert translate.status_code == 401  # the token is checked before anything else
        ok = httpx.post(f"{url}/v1/generate", json={"n": 1}, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/v1/model", headers={"authorization": "bearer s3cret"}).status_code == 200
        for open_path in ("/healthz", "/", "/metrics"):
            assert httpx.get(f"{url}{open_path}").status_code == 200


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


def post_held(url: str, request: dict, release: threading.Event, results: dict) -> None:
    """POST /v1/generate whose body stops after a few bytes until `release` is set; the response
    goes to results["slow"] (run it in a thread)."""
    body = json.dumps(request).encode()

    def chunks():
        yield body[:4]
        release.wait(30)
        yield body[4:]

    results["slow"] = httpx.post(f"{url}/v1/generate", content=chunks(), headers={"content-type": "application/json"},
                                 timeout=60)  # fmt: skip


def test_champion_change_is_picked_up_without_dropping_a_request_in_flight(tmp_path, models):
    reg = Registry(tmp_path / "registry")
    assert promote_file(reg, tmp_path / "w1", models["plain"]) == "v0001"
    app = create_app(ServeConfig(registry=tmp_path / "registry"))
    holder, real_current = app.state.holder, app.state.holder.current
    took_model, release, results = threading.Event(), threading.Event(), {}

    def current():  # tells the test when the slow request below has taken its model
        served = real_current()
        took_model.set()
        return served

    with running(app) as url:
        assert httpx.get(f"{url}/v1/model").json()["version"] == "v0001"
        holder.current = current
        # the request stays in flight, its body half sent, until the champion has changed
        t = threading.Thread(target=post_held, args=(url, {"n": 8, "seed": 5, "format": "npy"}, release, results))
        t.start()
        assert took_model.wait(10)
        holder.current = real_current
        assert promote_file(reg, tmp_path / "w2", models["generate"]) == "v0002"  # the conditional model
        meta = httpx.get(f"{url}/v1/model").json()  # the very next request
        assert meta["version"] == "v0002" and meta["num_classes"] == 3 and meta["file"] == "generator.onnx"
        release.set()
        t.join(timeout=60)
        slow = results["slow"]
        assert slow.status_code == 200 and slow.headers["x-model-version"] == "v0001"
        np.testing.assert_array_equal(np.load(io.BytesIO(slow.content)), OnnxGenerator(models["plain"]).generate(8, 5))
        owl = httpx.post(f"{url}/v1/generate", json={"n": 2, "labels": ["owl"]})
        assert owl.status_code == 200 and owl.headers["x-model-version"] == "v0002"
        assert request_counts(url)[("reload", "ok")] == 1


def test_a_champion_that_cannot_be_loaded_leaves_the_old_one_serving(tmp_path, models):
    reg = Registry(tmp_path / "registry")
    promote_file(reg, tmp_path / "w1", models["plain"])
    with running(ServeConfig(registry=tmp_path / "registry")) as url:
        assert promote_file(reg, tmp_path / "w2", models["generate"]) == "v0002"
        reg.model_path("v0002").write_bytes(b"not an ONNX model")  # promote refuses a broken file: broken after
        res = httpx.post(f"{url}/v1/generate", json={"n": 1})
        assert res.status_code == 200 and res.headers["x-model-version"] == "v0001"
        health = httpx.get(f"{url}/healthz").json()
        assert health["version"] == "v0001" and "v0002" in health["reload_error"]
        assert request_counts(url)[("reload", "failed")] == 1
        reg.rollback()  # the champion is the served model again: nothing to load, nothing wrong
        assert httpx.get(f"{url}/healthz").json()["reload_error"] is None


def announcement(proc: subprocess.Popen) -> dict:
    """The JSON line `ganpipe serve` prints on stdout once it listens (read in a thread: a hung server fails)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return json.loads(lines.get(timeout=60))


def test_cli_serves_on_loopback_with_the_token_from_the_environment_and_stops_on_ctrl_c(models):
    env = {**os.environ, "GANPIPE_SERVE_TOKEN": "t0ken", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--model", str(models["generate"]), "--port", "0",
           "--model-name", "digits"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = announcement(proc)
        assert said["token_required"] is True and said["serving"] == str(models["generate"])
        host, port = re.fullmatch(r"http://([\d.]+):(\d+)", said["url"]).groups()
        assert host == "127.0.0.1" and port != "0"  # the default bind, this machine only, on the port it was given
        url = said["url"]
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
        assert httpx.get(f"{url}/v1/model").status_code == 401
        assert httpx.get(f"{url}/v1/model", headers={"authorization": "Bearer t0ken"}).json()["num_classes"] == 3
        assert httpx.get(f"{url}/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0


def test_cli_on_a_busy_port_fails_with_one_line_before_announcing_anything(models):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "flows.cli", "serve", "--model", str(models["generate"]), "--port", str(port)]
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == f"ganpipe serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert res.stdout == "" and "Uvicorn running" not in res.stderr and "serving" not in res.stderr


def test_two_replicas_on_one_registry_switch_to_a_new_champion_within_the_check_interval_under_load(
    tmp_path, models
):
    """Two `ganpipe serve` processes (replicas behind a load balancer) follow one registry folder:
    a promotion reaches both within --reload-check-s while a bounded load runs against both, and
    not one request fails."""
    check_s = 0.5
    reg = Registry(tmp_path / "registry")
    assert promote_file(reg, tmp_path / "w1", models["plain"]) == "v0001"
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--registry", str(tmp_path / "registry"), "--port", "0",
           "--reload-check-s", str(check_s)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    stop, log = threading.Event(), {0: [], 1: []}

    def load(replica: int, url: str) -> None:  # bounded: at most 60 s or 3,000 requests
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3000):
                if stop.is_set():
                    return
                res = client.post("/v1/generate", json={"n": 1, "seed": 1, "format": "npy"})
                log[replica].append((time.monotonic(), res.status_code, res.headers.get("x-model-version")))

    try:
        urls = [announcement(p)["url"] for p in procs]
        threads = [threading.Thread(target=load, args=(i, u), daemon=True) for i, u in enumerate(urls)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while min(len(log[0]), len(log[1])) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        promoted_at = time.monotonic()
        assert promote_file(reg, tmp_path / "w2", models["generate"]) == "v0002"
        while time.monotonic() < min(deadline, promoted_at + check_s + 10):
            if all(any(v == "v0002" for _, _, v in log[i]) for i in (0, 1)) and time.monotonic() > promoted_at + 2:
                break
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        assert [p.wait(timeout=30) for p in procs] == [0, 0]
    for i in (0, 1):
        rows = log[i]
        assert rows and all(status == 200 for _, status, _ in rows), f"replica {i}: {set(s for _, s, _ in rows)}"
        assert [v for _, _, v in rows if v] == [v for _, _, v in rows]  # every answer names its version
        first_new = next(t for t, _, v in rows if v == "v0002")
        assert any(v == "v0001" for _, _, v in rows)  # it served the old champion under load first
        # within the interval (plus loading the model), and never back to the old one afterwards
        assert first_new - promoted_at < check_s + 5.0, f"replica {i} switched after {first_new - promoted_at:.2f} s"
        assert all(v == "v0002" for t, _, v in rows if t > first_new)
