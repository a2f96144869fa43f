"""`ganpipe serve` against slow and hostile clients and untrustworthy files, over real connections
to a real uvicorn on 127.0.0.1 (configured as `ganpipe serve` configures it) with real ONNX files:
malformed headers and requests that were 500s, model metadata that does not fit its graph, the
version routes of the Open Inference Protocol, and what the unauthenticated /healthz may show."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from test_serve import models, promote_file, running  # noqa: F401  (models: the fixture)
from test_serve_faults import gauge, server_errors_logged, wait_for

from pipeline.registry import Registry
from pipeline.serve.app import ServeConfig

IMAGES = {"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}


def z_tensor(n: int = 1) -> dict:
    return {"name": "z", "shape": [n, 8], "datatype": "FP32", "data": [0.1] * (8 * n)}


@pytest.fixture(scope="module")
def tr_url(models):  # noqa: F811
    with running(ServeConfig(model=models["translate"])) as url:
        yield url


# Inference-Header-Content-Length of Latin-1 digits: '²'.isdigit() is true and int('²') raises (was a 500)
@pytest.mark.parametrize("value", [b"\xb2", b"\xb9\xb3", "1" * 5000, "-1"],
                         ids=["superscript-2", "superscript-13", "5000-digits", "negative"])  # fmt: skip
def test_an_inference_header_length_that_is_not_ascii_digits_is_a_400(tr_url, value):
    with server_errors_logged() as tracebacks:
        res = httpx.post(f"{tr_url}/v2/models/ganpipe/infer", json={"inputs": [IMAGES]},
                         headers={"inference-header-content-length": value})  # fmt: skip
    assert res.status_code == 400, res.content[:200]
    assert res.json()["error"].startswith("bad header: Inference-Header-Content-Length")
    assert not tracebacks


def test_outputs_naming_an_output_twice_is_a_400_naming_it(tr_url):  # was a 500 (zip strict)
    body = {"inputs": [IMAGES], "outputs": [{"name": "translated"}, {"name": "translated"}]}
    with server_errors_logged() as tracebacks:
        res = httpx.post(f"{tr_url}/v2/models/ganpipe/infer", json=body)
    assert res.status_code == 400 and "'translated'" in res.json()["error"], res.content[:200]
    assert not tracebacks
    once = httpx.post(f"{tr_url}/v2/models/ganpipe/infer", json={**body, "outputs": [{"name": "translated"}]})
    assert once.status_code == 200 and [o["name"] for o in once.json()["outputs"]] == ["translated"]


@pytest.mark.parametrize("name, header", [("gen✓.onnx", "gen%E2%9C%93.onnx"),
                                          ("gen\r\nx-evil: 1.onnx", "gen%0D%0Ax-evil: 1.onnx"),
                                          ("100%.onnx", "100%25.onnx")],
                         ids=["non-latin-1", "cr-lf", "percent"])  # fmt: skip
def test_a_model_file_name_outside_printable_ascii_is_percent_encoded_in_x_model_version(models, tmp_path, name,  # noqa: F811
                                                                                         header):  # fmt: skip
    """A name Starlette cannot encode as Latin-1 made every model response a 500; CR/LF dropped the connection."""
    path = tmp_path / name
    shutil.copy(models["plain"], path)
    with running(ServeConfig(model=path)) as url, server_errors_logged() as tracebacks:
        v1 = httpx.post(f"{url}/v1/generate", json={"n": 1})
        v2 = httpx.post(f"{url}/v2/models/ganpipe/infer", json={"inputs": [z_tensor()]})
        meta = httpx.get(f"{url}/v2/models/ganpipe").json()
    for res in (v1, v2):
        assert res.status_code == 200 and res.headers["x-model-version"] == header, res.content[:200]
        assert "x-evil" not in res.headers
    assert v2.json()["model_version"] == name and meta["versions"] == [name]  # JSON carries the name as it is
    assert not tracebacks
    assert np.asarray(v2.json()["outputs"][0]["data"]).size == 256


def test_the_version_routes_of_the_open_inference_protocol_serve_the_advertised_version_only(models):  # noqa: F811
    """/v2/models/{name}/versions/{version}[/ready|/infer] were 404, even for the version the metadata lists."""
    import tritonclient.http as triton

    with running(ServeConfig(model=models["plain"])) as url:
        c = triton.InferenceServerClient(url.removeprefix("http://"))
        (version,) = c.get_model_metadata("ganpipe")["versions"]
        assert c.get_model_metadata("ganpipe", version) == c.get_model_metadata("ganpipe")
        assert c.is_model_ready("ganpipe", version) and not c.is_model_ready("ganpipe", "v9999")
        z = triton.InferInput("z", [2, 8], "FP32")
        z.set_data_from_numpy(np.full((2, 8), 0.1, np.float32))
        versioned = c.infer("ganpipe", [z], model_version=version)
        np.testing.assert_array_equal(versioned.as_numpy("images"), c.infer("ganpipe", [z]).as_numpy("images"))
        assert versioned.get_response()["model_version"] == version
        for path in ("versions/v9999", "versions/v9999/ready", "versions/v9999/infer"):
            method = httpx.post if path.endswith("infer") else httpx.get
            res = method(f"{url}/v2/models/ganpipe/{path}", **({"json": {"inputs": [z_tensor()]}}
                                                               if method is httpx.post else {}))  # fmt: skip
            assert res.status_code == 404, (path, res.content[:200])
            assert list(res.json()) == ["error"] and "'v9999'" in res.json()["error"] and version in res.json()["error"]
        assert httpx.get(f"{url}/v2/models/other/versions/{version}").status_code == 404


SECRET = "root:x:0:0:Hidden Name:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin\n"


def as_symlink(target):
    def point(pointer):
        os.symlink(target, pointer.with_name(".champion.link"))
        os.replace(pointer.with_name(".champion.link"), pointer)

    return point


@pytest.mark.parametrize("point", ["symlink", "text", "long"])
def test_healthz_never_shows_what_a_bad_champion_pointer_holds(models, tmp_path, point):  # noqa: F811
    """/healthz needs no token; its reload_error quoted the first 40 characters of whatever file the
    pointer resolved to (a symlink to /etc/passwd showed `root:x:0:0…`)."""
    secret = tmp_path / "passwd"
    secret.write_text(SECRET)
    reg = Registry(tmp_path / "registry")
    promote_file(reg, tmp_path / "w1", models["plain"])
    pointer = tmp_path / "registry" / "champion"
    with running(ServeConfig(registry=tmp_path / "registry")) as url:
        if point == "symlink":
            as_symlink(secret)(pointer)
        else:
            pointer.write_text(SECRET[:20] if point == "text" else "v0001" + " " * 100 + SECRET)
        assert httpx.post(f"{url}/v1/generate", json={"n": 1}).headers["x-model-version"] == "v0001"
        health = httpx.get(f"{url}/healthz")
        assert health.json()["version"] == "v0001" and health.json()["reload_error"].startswith(f"{pointer}: ")
        assert "x:0:0" not in health.text and "Hidden" not in health.text, health.json()["reload_error"]
        pointer.unlink()
        pointer.write_text("v0001\n")  # a good pointer again: nothing wrong
        assert httpx.get(f"{url}/healthz").json()["reload_error"] is None
        as_symlink(tmp_path / "registry" / "v0001" / "version.json")(pointer)  # JSON, not a version name
        httpx.get(f"{url}/v1/model")
        assert '"version": "v0001"' not in httpx.get(f"{url}/healthz").json()["reload_error"]


def with_metadata(src, dst, **changes):
    """A copy of an exported ONNX file with some of its ganpipe.* metadata changed."""
    import onnx

    model = onnx.load(src)
    for prop in model.metadata_props:
        prop.value = str(changes.pop(prop.key.removeprefix("ganpipe."), prop.value))
    for key, value in changes.items():
        model.metadata_props.add(key=f"ganpipe.{key}", value=str(value))
    onnx.save(model, dst)
    return dst


LIES = {  # metadata that does not fit the graph: each was loaded, then failed every call with a 500
    "translate-task-on-a-generator": ("plain", {"task": "translate"}, "ganpipe.task 'translate'"),
    "latent-dim-1e8": ("plain", {"latent_dim": 100_000_000}, "ganpipe.latent_dim is 100000000, but z is [N, 8]"),
    "generate-task-on-a-translator": ("translate", {"task": "generate"}, "ganpipe.task 'generate'"),
    "classes-without-labels": ("plain", {"num_classes": 3}, "ganpipe.num_classes is 3"),
    "channels": ("generate", {"channels": 3}, "ganpipe.channels is 3"),
    "size-multiple": ("translate", {"size_multiple": 0}, "ganpipe.size_multiple is '0'"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_metadata_that_does_not_fit_the_graph_is_refused_when_loading_and_when_promoting(models, tmp_path, lie):  # noqa: F811
    from test_serve import promote_file as promote

    from pipeline.inference import ModelError, open_model
    from pipeline.registry import RegistryError

    source, changes, words = LIES[lie]
    lying = with_metadata(models[source], tmp_path / "lying.onnx", **changes)
    with pytest.raises(ModelError, match=re.escape(f"lying.onnx: {words}")) as err:  # the service loads with open_model
        open_model(lying)
    assert "\n" not in str(err.value) and "the graph takes" in str(err.value)
    reg = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match=re.escape(f"generator.onnx: {words}") + ".*refusing to promote"):
        promote(reg, tmp_path / "work", lying)
    assert reg.versions() == []
    if lie == "latent-dim-1e8":  # put in place behind the registry's back: the service keeps the old model
        promote(reg, tmp_path / "w1", models["plain"])
        with running(ServeConfig(registry=tmp_path / "registry")) as url:
            promote(reg, tmp_path / "w2", models["plain"])
            shutil.copy(lying, reg.model_path("v0002"))
            res = httpx.post(f"{url}/v1/generate", json={"n": 1})
            assert res.status_code == 200 and res.headers["x-model-version"] == "v0001"
            assert "ganpipe.latent_dim is 100000000" in httpx.get(f"{url}/healthz").json()["reload_error"]


def connect(url: str) -> socket.socket:
    return socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=10)


def head(path: str, length: int = 1000, ctype: str = "application/json") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n".encode()


def trickle_until_closed(sock: socket.socket, first: bytes, every: float = 0.2, limit: float = 15) -> bytes:
    """Send `first`, then a byte whenever the server has said nothing for `every` s, as a slow client
    does, until the server closes the connection; what it sent meanwhile."""
    sock.sendall(first)
    sock.settimeout(every)
    got, deadline = b"", time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(b" ")
            except OSError:
                return got
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the server kept the connection open for {limit} s; it sent {got[:200]!r}")


def test_normal_requests_are_served_while_18_slow_clients_hold_bodies_open(models):  # noqa: F811
    """18 (max_concurrency + max_queue) sockets that declare 1000 bytes, send `{` and then a byte at a time
    were each admitted before their bodies were read: every /v1 and /v2 model call got 503 while they
    stayed. Bodies are now read before admission, so they hold no place."""
    stop, sockets = threading.Event(), []
    with running(ServeConfig(model=models["plain"])) as url:
        for i in range(18):
            sock = connect(url)
            sock.sendall(head("/v1/generate" if i % 2 else "/v2/models/ganpipe/infer") + b"{")
            sockets.append(sock)

        def keep_sending():
            while not stop.wait(0.5):
                for sock in sockets:
                    sock.sendall(b" ")

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            wait_for(lambda: gauge(url, "ganpipe_request_body_bytes") >= 18, "the 18 slow bodies to be read")
            with httpx.Client(timeout=30) as c:
                statuses = [c.post(f"{url}/v1/generate", json={"n": 2}).status_code for _ in range(5)]
                statuses += [c.post(f"{url}/v2/models/ganpipe/infer", json={"inputs": [z_tensor(2)]}).status_code
                             for _ in range(5)]  # fmt: skip
            assert gauge(url, "ganpipe_inference_admitted") == 0  # the slow ones hold no place
        finally:
            stop.set()
            sender.join()
            for sock in sockets:
                sock.close()
        assert statuses == [200] * 10
        wait_for(lambda: gauge(url, "ganpipe_request_body_bytes") == 0, "the slow bodies to be let go")


@pytest.mark.parametrize("path", ["/v1/generate", "/v2/models/ganpipe/infer"])
def test_a_body_that_does_not_arrive_within_the_body_timeout_gets_408_and_the_connection_closed(models, path):  # noqa: F811
    with running(ServeConfig(model=models["plain"], body_timeout_s=1)) as url, connect(url) as sock:
        start = time.monotonic()
        answer = trickle_until_closed(sock, head(path) + b"{")
        assert time.monotonic() - start < 10  # closed by the server, not by the limit of this test
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout", answer[:300]
        assert b"connection: close" in rest.lower() and b"request timeout" in rest and b"within 1 s" in rest
        assert gauge(url, "ganpipe_inference_admitted") == 0 and gauge(url, "ganpipe_request_body_bytes") == 0
        assert httpx.post(f"{url}/v1/generate", json={"n": 1}).status_code == 200


def test_a_request_head_that_does_not_arrive_within_the_header_timeout_is_closed(models):  # noqa: F811
    """uvicorn's keep-alive timeout is cancelled by every byte received, and not armed before the
    first request: a head sent a byte at a time, or nothing at all, held a socket for ever."""
    with running(ServeConfig(model=models["plain"], header_timeout_s=1)) as url:
        with connect(url) as slow_head, connect(url) as silent:
            assert trickle_until_closed(slow_head, b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nX-Slow: ") == b""
            silent.settimeout(10)
            assert silent.recv(100) == b""  # closed
        with connect(url) as unwanted_body:
            answered = trickle_until_closed(unwanted_body, head("/v1/generate", ctype="text/plain") + b"{")
            assert answered.startswith(b"HTTP/1.1 415 ")  # answered at once, then closed while the body trickled
        with httpx.Client() as c:  # a client that keeps its connection alive between requests is not disturbed
            assert [c.get(f"{url}/healthz").status_code for _ in range(3)] == [200] * 3


def test_oip_parsing_arrays_and_response_building_run_off_the_event_loop(models, monkeypatch):  # noqa: F811
    """Parsing an 8 MiB JSON body, np.asarray of its data and the JSON of a 1024² result ran on the event
    loop: /healthz stalled about 2 s behind two such clients. Each step now records whether it ran with an
    event loop running in its thread (calling the real function), for /v2 and /v1 alike."""
    import asyncio

    from pipeline.serve import oip, v1

    where: dict[str, set[str]] = {}

    def recorded(name, real):
        def call(*args, **kwargs):
            on_loop = asyncio._get_running_loop() is not None
            where.setdefault(name, set()).add("event loop" if on_loop else "thread pool")
            return real(*args, **kwargs)

        return call

    for module, name in ((oip, "parse_json"), (oip, "_feed"), (oip, "_answer"), (v1, "parse_json")):
        monkeypatch.setattr(module, name, recorded(f"{module.__name__}.{name}", getattr(module, name)))
    with running(ServeConfig(model=models["translate"])) as url:
        res = httpx.post(f"{url}/v2/models/ganpipe/infer", json={"inputs": [IMAGES]})
        assert res.status_code == 200 and len(res.json()["outputs"][0]["data"]) == 64
        bad = httpx.post(f"{url}/v2/models/ganpipe/infer", json={"inputs": [{**IMAGES, "datatype": "FP64"}]})
        assert bad.status_code == 400 and "wrong datatype" in bad.json()["error"]  # refused from the thread too
    with running(ServeConfig(model=models["plain"])) as url:
        assert httpx.post(f"{url}/v1/generate", json={"n": 1}).status_code == 200
    assert where == {"pipeline.serve.oip.parse_json": {"thread pool"}, "pipeline.serve.oip._feed": {"thread pool"},
                     "pipeline.serve.oip._answer": {"thread pool"},
                     "pipeline.serve.v1.parse_json": {"thread pool"}}  # fmt: skip


def test_large_oip_json_bodies_are_parsed_in_a_child_process_with_the_same_answers(tr_url, models):  # noqa: F811
    """A body of 1 MiB or more is parsed by a child process (orjson and np.asarray hold the GIL, which the
    event loop needs): the result is the model's own, and bad data gets the same 400 as a small body."""
    from pipeline.inference import OnnxTranslator
    from pipeline.serve import decode

    image = np.random.default_rng(0).uniform(-1, 1, (1, 1, 256, 256)).astype(np.float32)
    tensor = {"name": "images", "shape": [1, 1, 256, 256], "datatype": "FP32"}
    for data in (image.ravel().tolist(), image.tolist()):  # flat and nested
        body = json.dumps({"inputs": [{**tensor, "data": data}]}).encode()
        assert len(body) > decode.MIN_BYTES
        res = httpx.post(f"{tr_url}/v2/models/ganpipe/infer", content=body, timeout=60)
        assert res.status_code == 200, res.content[:200]
        got = np.array(res.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 1, 256, 256)
        np.testing.assert_array_equal(got, OnnxTranslator(models["translate"]).translate(image))
    assert decode._pool is not None  # the child process did the parsing (this test's server is in this process)
    flat = image.ravel().tolist()
    for data, words in (([*flat[:-1], "x"], "bad data"), ([[0.5] * 256] * 255 + [[0.5] * 255], "not a regular array"),
                        ([*flat[:-1], float("nan")], "NaN"), (flat[:-1], "65535 of float64")):  # fmt: skip
        body = json.dumps({"inputs": [{**tensor, "data": data}]}).encode()
        res = httpx.post(f"{tr_url}/v2/models/ganpipe/infer", content=body, timeout=60)
        assert res.status_code == 400 and words in res.json()["error"], (words, res.content[:300])


def test_a_server_stopped_with_sigterm_leaves_no_parsing_process_behind(models):  # noqa: F811
    """uvicorn re-raises SIGTERM once it has shut down, so exit handlers never run: the child processes
    that parse large bodies outlived the server until it stopped them in its own shutdown."""
    import subprocess
    import sys

    import psutil
    from test_export import REPO
    from test_serve import announcement
    from test_serve_faults import SERVE

    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(models["translate"])], cwd=REPO, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    children = []
    try:
        url = announcement(proc)["url"]
        image = np.full((1, 1, 256, 256), 0.123456, np.float32).tolist()
        body = json.dumps({"inputs": [{**IMAGES, "shape": [1, 1, 256, 256], "data": image}]}).encode()
        assert len(body) > 1 << 20 and httpx.post(f"{url}/v2/models/ganpipe/infer", content=body).status_code == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the parsing process (and multiprocessing's resource tracker)
        proc.terminate()
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for child in children:  # should the test fail, leave nothing running
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
