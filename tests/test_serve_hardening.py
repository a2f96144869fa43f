"""`ganpipe serve` against slow and hostile clients and untrustworthy files, over real connections
to a real uvicorn on 127.0.0.1 (configured as `ganpipe serve` configures it) with real ONNX files:
malformed headers and requests that were 500s, model metadata that does not fit its graph, the
version routes of the Open Inference Protocol, and what the unauthenticated /healthz may show."""

from __future__ import annotations

import os
import re
import shutil

import httpx
import numpy as np
import pytest
from test_serve import models, promote_file, running  # noqa: F401  (models: the fixture)
from test_serve_faults import server_errors_logged

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
