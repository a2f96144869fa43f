"""The OpenAPI schema of `ganpipe serve` tells the truth: what it declares (error statuses, media
types, the limits of this service and the labels of the model it serves), and what schemathesis
finds sending generated requests, valid and invalid, to a real uvicorn on 127.0.0.1 with every
check on: no server error, and every status, media type, header and body as declared."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from test_serve import grew, models, request_counts, running  # noqa: F401  (models: the fixture)

from pipeline.image_input import IMAGE_FORMATS
from pipeline.serve.app import ServeConfig

MAX_N = 8


@st.composite
def image_file(draw, fmt: str) -> bytes:
    """A real image file: random bytes are schema-valid for a binary body but are not an image."""
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(["L", "RGB"]))
    pixels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def generate_json() -> st.SearchStrategy[bytes]:
    """A /v1/generate request as `curl -d` sends it (Content-Type application/x-www-form-urlencoded): the schema
    declares that body as a string holding JSON, which schemathesis would fill with any text."""
    seed, labels = st.integers(0, 2**63 - 1), st.sampled_from(["cat", "dog", "owl", 0, 1, 2, "2"])
    fields = {"n": st.integers(1, MAX_N), "seed": seed, "seeds": st.lists(seed, min_size=1, max_size=MAX_N),
              "labels": st.lists(labels, max_size=4), "format": st.sampled_from(["png", "npy", "json"])}  # fmt: skip
    return st.fixed_dictionaries({}, optional=fields).map(lambda body: json.dumps(body).encode())


for _fmt in IMAGE_FORMATS:
    schemathesis.openapi.media_type(f"image/{_fmt.lower()}", image_file(_fmt))
schemathesis.openapi.media_type("application/x-www-form-urlencoded", generate_json())


@pytest.fixture(scope="module")
def gen_url(models):  # noqa: F811
    with running(ServeConfig(model=models["generate"], max_n=MAX_N)) as url:
        yield url


@pytest.fixture(scope="module")
def tr_url(models):  # noqa: F811
    with running(ServeConfig(model=models["translate"], max_upload_bytes=50_000, max_pixels=20_000)) as url:
        yield url


def test_the_schema_declares_errors_media_types_limits_and_labels(gen_url):
    schema = httpx.get(f"{gen_url}/openapi.json").json()
    gen, tr = schema["paths"]["/v1/generate"]["post"], schema["paths"]["/v1/translate"]["post"]
    assert gen["requestBody"]["required"] and tr["requestBody"]["required"]
    body = gen["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert (body["n"]["minimum"], body["n"]["maximum"]) == (1, MAX_N)
    assert body["seed"]["maximum"] == 2**63 - 1  # exactly: a float bound would be 2**63
    names = body["labels"]["anyOf"][0]["items"]["anyOf"][0]["enum"]
    assert names == ["cat", "dog", "owl", "0", "1", "2"]
    assert {"image/png", "image/jpeg"} <= set(tr["requestBody"]["content"])
    assert set(gen["responses"]["200"]["content"]) == {"image/png", "application/octet-stream", "application/json"}
    assert set(tr["responses"]["200"]["content"]) == {"image/png"}
    for op, statuses in ((gen, {"400", "401", "408", "409", "413", "415", "422", "503"}),
                         (tr, {"400", "401", "408", "409", "413", "415", "503"})):  # fmt: skip
        assert set(op["responses"]) == {"200"} | statuses
        for status in statuses:
            error = op["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}
        assert op["responses"]["503"]["headers"]["retry-after"]["required"]
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["error", "detail"]
    assert (body["seeds"]["anyOf"][0]["maxItems"], body["seeds"]["anyOf"][0]["items"]["maximum"]) == (MAX_N, 2**63 - 1)
    as_curl_sends_it = gen["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert as_curl_sends_it["type"] == "string" and as_curl_sends_it["contentMediaType"] == "application/json"
    form = tr["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["required"] == ["file"] and form["schema"]["properties"]["file"]["format"] == "binary"
    assert "image/png" in form["encoding"]["file"]["contentType"]
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["responses"]) == {"200", "400", "401", "404", "408", "413", "503"}
    assert schema["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]["responses"] == infer["responses"]
    assert infer["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OipError"
    }
    assert infer["requestBody"]["content"]["application/json"]["schema"]["required"] == ["inputs"]
    assert {"/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}", "/v2/models/{name}/ready"} <= set(
        schema["paths"])  # fmt: skip
    assert "/docs" not in schema["paths"] and "/" in schema["paths"]
    assert set(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "securitySchemes" not in schema.get("components", {})  # no token: nothing to send


def test_the_schema_names_the_token_and_an_unconditional_models_labels(models, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GANPIPE_SERVE_TOKEN", "s3cret")
    with running(ServeConfig(model=models["plain"])) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert schema["paths"]["/v1/model"]["get"]["security"] == [{"bearer": []}]
    assert schema["paths"]["/v2/models/{name}/infer"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/v2/health/ready"]["get"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    labels = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert labels["properties"]["labels"]["anyOf"][0]["maxItems"] == 0


def schemathesis_run(url: str, max_examples: int) -> tuple[list[str], int]:
    """Run schemathesis as `schemathesis run URL/openapi.json --checks all` would (every phase,
    every check, through its engine: its pytest loader for live servers is broken under pytest 9)
    and return one line per failed check, and how many checks ran."""
    from schemathesis.engine import events

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.seed = 0  # the same cases on every run, so that a failure here reproduces
    schema.config.generation.update(max_examples=max_examples, database="none")
    failures, checked = [], 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError | events.NonFatalError):
            failures.append(f"{getattr(event, 'label', '')}: schemathesis error {event}")
        if isinstance(event, events.ScenarioFinished):
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    checked += 1
                    if node.failure_info is not None:
                        failure = node.failure_info.failure
                        failures.append(f"{event.recorder.label}: {node.name}: {failure.title}: {failure.message}")
    return sorted(set(failures)), checked


# Bounded: each operation gets the coverage phase (boundary and invalid values, a few dozen cases)
# and this many generated examples per mode; both services take ~10 s on 2 cores.
def test_a_generator_service_conforms_to_its_schema(gen_url):
    before = request_counts(gen_url)
    failures, checked = schemathesis_run(gen_url, max_examples=15)
    assert not failures, "\n".join(failures)
    assert checked > 300
    ran = grew(before, request_counts(gen_url))
    assert ran[("/v1/generate", "200")] > 10 and ran[("/v1/generate", "422")] > 10  # valid and invalid bodies


def test_a_translator_service_conforms_to_its_schema(tr_url):
    before = request_counts(tr_url)
    failures, checked = schemathesis_run(tr_url, max_examples=15)
    assert not failures, "\n".join(failures)
    assert checked > 300
    assert grew(before, request_counts(tr_url))[("/v1/translate", "200")] > 10  # real images, translated
