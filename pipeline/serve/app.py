"""`ganpipe serve`: an HTTP service over ONNX Runtime for the exported generators.

FastAPI and uvicorn are already installed through Prefect. Endpoints:
  GET  /              a self-contained page to try the model (no CDN)
  GET  /healthz       liveness, and which model is loaded (never needs the token)
  GET  /v1/model      the model's ganpipe.* metadata, its registry version, the service's limits
  POST /v1/generate   JSON {n, seed | seeds, labels, truncation_psi, format: png|npy|json, nrow} -> PNG grid
                      (or the array)
  POST /v1/translate  an image as the request body (Content-Type image/*) or a multipart `file` -> PNG
  /v2/...             the Open Inference Protocol (KServe, Triton) over the same model: see oip.py
  GET  /docs          Swagger UI, from files served by the service itself (no CDN)
  GET  /metrics       Prometheus text: requests by endpoint and status, latency, model reloads,
                      inference requests admitted and running
  GET  /openapi.json  the API, with every error status, media type and limit it really has

Every bad request gets a 4xx JSON body {"error": ..., "detail": ...} and the service keeps
serving. Bodies are read with a size limit before anything is parsed, and within `body_timeout_s`
(else 408 and the connection closed); a request's line and headers must arrive within
`header_timeout_s` (else the connection is closed: see http_protocol). A client that goes away
while its request is being read is counted with status 499 (nginx's "client closed request"),
not as a server error. Parsing, inference and the response's encoding run in the thread pool,
never on the event loop, on one ONNX Runtime session per model (its `run` is thread-safe), at
most `max_concurrency` at once: the memory of a translation grows with its pixels, so
concurrency is what bounds the peak. Requests to the model endpoints are admitted once their
bodies have been read (a slow client holds no place), at most `max_concurrency + max_queue` at
once; beyond that they get 503 with Retry-After at once rather than waiting in an unbounded
queue. The bodies being read or held take at most `(max_concurrency + max_queue) *
max_upload_bytes` bytes together (beyond: 503 too).

With a registry, the champion is served and reloaded when the champion pointer changes: the
new session is built first and then swapped in, so requests in flight finish on the model they
started with; a champion that cannot be loaded leaves the old one serving.
With a registry that has no champion yet, the service starts live but not ready (/v2/health/ready
and the model endpoints answer 503) and serves the first champion promoted.
Responses from the model carry `X-Model-Version` (the registry version, or the file name).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import io
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from pipeline.errors import UserError
from pipeline.grid import make_grid, png_bytes
from pipeline.inference import (
    IMAGE_FORMATS,
    MAX_PSI,
    ImageRejected,
    ModelError,
    OnnxGenerator,
    OnnxTranslator,
    open_image,
    open_model,
)
from pipeline.serve import decode
from pipeline.serve.common import (
    RETRY_AFTER_S,
    ApiError,
    error_response,
    error_responses,
    header_value,
    media_type,
    parse_json,
    problems,
    read_body,
)
from pipeline.serve.oip import add_oip_routes

TOKEN_ENV = "GANPIPE_SERVE_TOKEN"
PAGE = Path(__file__).with_name("page.html")
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer: in metrics only, never sent
MAX_JSON_BYTES = 1 << 20  # a /v1/generate body; generous for max_n labels, small enough to parse at once
LOOPBACK = ("127.0.0.1", "localhost", "::1")

log = logging.getLogger("ganpipe.serve")


@dataclass
class ServeConfig:
    model: Path | None = None  # a fixed ONNX file; None = the registry's champion
    registry: Path = Path("registry")
    direction: str = "AB"  # which translator of a CycleGAN champion to serve
    max_n: int = 64
    max_upload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 1024 * 1024  # a 64-channel layer of a 1024x1024 translation is already 256 MB
    device: str = "auto"
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)
    reload_check_s: float = 0.0  # 0: look at the champion pointer (one stat) on every request
    max_concurrency: int = 2  # inferences at once; each may hold a max_pixels translation's activations
    max_queue: int = 16  # further requests admitted to wait for one of those; beyond: 503 + Retry-After
    model_name: str = "ganpipe"  # the model's name in the Open Inference Protocol's /v2/models/{name}
    body_timeout_s: float = 60.0  # a request body must arrive within this (8 MiB: at 140 kB/s); else 408, closed
    header_timeout_s: float = 20.0  # a request's line and headers must arrive within this; else the socket is closed

    def __post_init__(self):
        if self.max_concurrency < 1 or self.max_queue < 0:
            raise UserError(f"max_concurrency must be >= 1 and max_queue >= 0, got {self.max_concurrency} "
                            f"and {self.max_queue}")  # fmt: skip
        if not (self.body_timeout_s > 0 and self.header_timeout_s > 0):
            raise UserError(f"body_timeout_s and header_timeout_s must be > 0, got {self.body_timeout_s} and "
                            f"{self.header_timeout_s}")  # fmt: skip


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's "integer" is any number without a fractional part, 3.0 included; strings and booleans are not.
JsonInt = Annotated[StrictInt, BeforeValidator(_whole_number)]
# bounds inside Annotated: given to Field, pydantic writes them into an anyOf (`| None`) as "ge"/"le", not JSON Schema
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1), BeforeValidator(_whole_number)]
SEEDS = "one image per seed, each the image that seed alone gives; n and seed are then not used"
# NaN and infinity (which Python's JSON parser reads) are refused here, as 422 naming the field
Psi = Annotated[StrictFloat, Field(ge=-MAX_PSI, le=MAX_PSI, allow_inf_nan=False)]
PSI_HELP = (
    "truncation, for models that take it (GET /v1/model: truncation): 1 or null = none, lower = each image "
    "pulled towards the average image (more typical, less varied), 0 = that one image for every seed"
)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: JsonInt = Field(16, ge=1, description="number of images")  # le: the service's max_n, see _request_model
    seed: JsonInt = Field(0, ge=0, le=2**63 - 1)
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=64)] | None = Field(None, description=SEEDS)
    labels: list[StrictStr | JsonInt] | None = Field(None, description="class names or indices, cycled")
    truncation_psi: Psi | None = Field(None, description=PSI_HELP)
    format: Literal["png", "npy", "json"] = "png"
    nrow: Annotated[StrictInt, Field(ge=1, le=64), BeforeValidator(_whole_number)] | None = None  # bounds: see Seed


def _request_model(max_n: int) -> type[GenerateRequest]:
    """GenerateRequest with `n` and `seeds` bounded by this service's max_n, so that the schema states the bound."""
    n = (JsonInt, Field(min(16, max_n), ge=1, le=max_n, description=f"number of images, 1 to {max_n}"))
    seeds = (Annotated[list[Seed], Field(min_length=1, max_length=max_n)] | None, Field(None, description=SEEDS))
    return create_model("GenerateRequest", __base__=GenerateRequest, n=n, seeds=seeds)


class GeneratedArray(BaseModel):
    """/v1/generate with format json."""

    shape: list[int] = Field(description="[n, channels, height, width]")
    images: list[Any] = Field(description="nested lists of that shape, values in [-1, 1]")


BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_TYPES = [f"image/{fmt.lower()}" for fmt in IMAGE_FORMATS]  # what the decoder reads; any image/* type is let in
MODEL_VERSION = {"x-model-version": {"description": "the registry version, or the model file's name (as UTF-8, "
                                                    "percent-encoded outside printable ASCII)",
                                    "schema": {"type": "string"}, "required": True}}  # fmt: skip


def _labels_schema(model: OnnxGenerator | OnnxTranslator) -> dict:
    """What `labels` the served model takes: none for an unconditional one, else its class names
    and indices (resolve_labels refuses anything else)."""
    if not isinstance(model, OnnxGenerator) or not model.info.num_classes:
        return {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}], "default": None,
                "description": "this model is unconditional: no labels"}  # fmt: skip
    count = model.info.num_classes
    names = list(dict.fromkeys([*model.info.class_names, *map(str, range(count))]))
    item = {"anyOf": [{"type": "string", "enum": names}, {"type": "integer", "minimum": 0, "maximum": count - 1}]}
    return {"anyOf": [{"type": "array", "items": item}, {"type": "null"}], "default": None,
            "description": "class names or indices, cycled over the n images"}  # fmt: skip


def _truncation_schema(model: OnnxGenerator | OnnxTranslator) -> dict:
    """What `truncation_psi` the served model takes: only null for a model without that input
    (the service refuses a number with 400), else a bounded number."""
    if not isinstance(model, OnnxGenerator) or not model.info.truncation:
        return {"type": "null", "default": None, "description": "this model has no truncation: leave it out or null"}
    return {"anyOf": [{"type": "number", "minimum": -MAX_PSI, "maximum": MAX_PSI}, {"type": "null"}],
            "default": None, "description": PSI_HELP}  # fmt: skip


def _release_freed_memory() -> None:
    """Have glibc hand freed blocks of 1 MiB and more straight back to the system. By default its
    threshold for that rises to the largest block freed so far (up to 32 MiB); blocks below it come
    from malloc's arenas, which give memory back only from their top, so a burst of large
    translations left the process near its peak for good (+350 MB after eight with a small
    translator, without ONNX Runtime's arena). Process-wide, hence here and not in create_app.
    Not glibc (musl, macOS): nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 1 << 20)


@dataclass(frozen=True)
class Served:
    """One loaded model and where it came from, swapped as a whole."""

    model: OnnxGenerator | OnnxTranslator
    path: Path
    version: str | None  # the registry version; None for a file given with --model
    loaded_at: float

    @property
    def name(self) -> str:
        return self.version or self.path.name


def _pointer_problem(pointer: Path) -> str | None:
    """Why the champion pointer cannot name a version, said without quoting what it holds: /healthz
    shows reload_error to anyone, and the registry's own message quotes the start of the file (a
    pointer made a symlink to /etc/passwd showed its first line). None: no pointer, or one the
    registry may read (a version name, or not UTF-8, which it reports by byte value and offset)."""
    from pipeline.registry import VERSION

    if not pointer.is_file():  # gone, or a FIFO or device (not opened: reading those may block or never end)
        return None
    try:
        with pointer.open("rb") as fh:
            head = fh.read(65)
    except OSError as err:
        return f"{pointer}: cannot be read: {err.strerror or type(err).__name__}"
    if len(head) > 64:
        return f"{pointer}: more than 64 bytes, so not a version name like v0001; promote or roll back to rewrite it"
    try:
        name = head.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not VERSION.match(name):
        return f"{pointer}: does not hold a version name like v0001 ({len(head)} bytes); promote or roll back to " \
               "rewrite it"  # fmt: skip
    return None


def _pointer_stamp(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the pointer is replaced (os.replace gives it a new inode) or rewritten."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ModelHolder:
    """The model being served, swapped atomically when the registry's champion changes.

    A request takes `current()` once and keeps that `Served` to its end, so a swap never cuts
    it off; the old session is freed when the last such request lets go. Only the request
    that notices the change loads the new model; meanwhile the others go on with the old one.
    A registry without a champion yet serves nothing (None) until one is promoted.
    """

    def __init__(self, cfg: ServeConfig, on_reload=None):
        self.cfg, self.on_reload = cfg, on_reload
        self.reload_error: str | None = None
        self._lock = threading.Lock()
        self._checked = 0.0
        if cfg.model is not None:
            self.registry, self._stamp = None, None
            self._served = self._load(Path(cfg.model), None)
            return
        from pipeline.registry import Registry

        self.registry = Registry(cfg.registry)
        self.pointer = self.registry.root / "champion"
        self._stamp = _pointer_stamp(self.pointer)
        version = self.registry.champion()
        self._served = None
        if version is None:
            log.warning("%s has no champion yet: nothing is served until one is promoted", self.registry.root)
        else:
            self._served = self._load(self.registry.model_path(version, cfg.direction), version)

    @property
    def served(self) -> Served | None:
        """The model in force, without looking at the registry."""
        return self._served

    def changed(self) -> bool:
        """Whether the champion pointer changed since it was last looked at (one stat; no load)."""
        return self.registry is not None and _pointer_stamp(self.pointer) != self._stamp

    def require(self) -> Served:
        """current(), or 503 while there is no model to serve."""
        served = self.current()
        if served is None:
            raise ApiError(503, "no model loaded", f"{self.registry.root} has no champion yet; promote one",
                           headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        return served

    def current(self) -> Served | None:
        """The model for this request, after loading a new champion if the pointer changed."""
        if self.registry is None:
            return self._served
        if self.cfg.reload_check_s and time.monotonic() - self._checked < self.cfg.reload_check_s:
            return self._served
        self._checked = time.monotonic()
        stamp = _pointer_stamp(self.pointer)
        if stamp == self._stamp or not self._lock.acquire(blocking=False):
            return self._served  # unchanged, or another request is loading the new champion
        try:
            if stamp != self._stamp:
                self._stamp = stamp  # a state that fails to load is tried once, not on every request
                self._reload()
        finally:
            self._lock.release()
        return self._served

    def _reload(self) -> None:
        try:
            if problem := _pointer_problem(self.pointer):
                raise UserError(problem)
            version = self.registry.champion()
            if version is None:
                raise UserError(f"{self.pointer}: the champion pointer is gone")
            if self._served and version == self._served.version:  # e.g. rolled back to the model still in service
                self.reload_error = None
                return
            fresh = self._load(self.registry.model_path(version, self.cfg.direction), version)
        except UserError as err:  # a broken champion must not take the service down
            self.reload_error = str(err)
            log.error("the new champion cannot be loaded (still serving %s): %s", self._served and self._served.name,
                      err)  # fmt: skip
            if self.on_reload:
                self.on_reload(False)
            return
        self._served, self.reload_error = fresh, None  # one assignment: the swap
        log.info("now serving %s (%s)", fresh.name, fresh.path)
        if self.on_reload:
            self.on_reload(True)

    def _load(self, path: Path, version: str | None) -> Served:
        return Served(open_model(path, self.cfg.device), path, version, time.time())


class _Limiter:
    """Reading bodies, admission to the model endpoints and the inference slots (see the module's docstring)."""

    def __init__(self, cfg: ServeConfig, admitted: Gauge, running: Gauge, buffered: Gauge):
        self.capacity = cfg.max_concurrency + cfg.max_queue
        self.slots = asyncio.Semaphore(cfg.max_concurrency)
        self.admitted, self.running, self.buffered = admitted, running, buffered
        self._count = 0  # only touched on the event loop: no lock
        # Bodies being read or held, together: what admitting before reading bounded them to.
        self.body_bytes = self.capacity * cfg.max_upload_bytes
        self._held = 0  # bytes; only touched on the event loop
        self.body_timeout_s = cfg.body_timeout_s

    @contextlib.asynccontextmanager
    async def body(self, request: Request, limit: int):
        """The request's body, read before admission so that a slow client holds no place: bounded by
        `limit`, by body_timeout_s (408) and, with every other body held at the moment, by body_bytes
        (503). Its bytes count until the request ends."""
        held = 0

        def reserve(n: int) -> None:
            nonlocal held
            if self._held + n > self.body_bytes:
                raise ApiError(503, "overloaded", f"{self.body_bytes} bytes of request bodies are already held; "
                                                  "retry later", {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
            held += n
            self._held += n
            self.buffered.inc(n)

        try:
            yield await read_body(request, limit, self.body_timeout_s, reserve)
        finally:
            self._held -= held
            self.buffered.dec(held)

    @contextlib.asynccontextmanager
    async def admit(self):
        if self._count >= self.capacity:
            raise ApiError(503, "overloaded", f"{self.capacity} requests are already in progress; retry later",
                           headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        self._count += 1
        self.admitted.inc()
        try:
            yield
        finally:
            self._count -= 1
            self.admitted.dec()

    async def run(self, fn, *args):
        """fn(*args) in the thread pool once a slot is free. The slot is held until the thread ends,
        even if the request is cancelled meanwhile: a thread cannot be stopped, and its memory counts."""
        async with self.slots:
            self.running.inc()
            try:
                return await run_in_threadpool(fn, *args)
            finally:
                self.running.dec()


class _Instrument:
    """ASGI middleware: count and time every request by route (a raw path would let clients mint
    unbounded label values), including those that end in an exception, and mark responses nosniff."""

    def __init__(self, app, requests: Counter, latency: Histogram):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # 500 unless a response starts

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except ClientDisconnect:  # nobody to answer, and nothing wrong with the server: no traceback
            status = CLIENT_CLOSED
            log.info("%s %s: the client went away while its request was being read", scope["method"], scope["path"])
        finally:
            endpoint = getattr(scope.get("route"), "path", None) or "other"
            self.requests.labels(endpoint, str(status)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - start)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return error_response(request, err.status, err.error, err.detail, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return error_response(request, 422, "invalid request", problems(err.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):  # unknown path (404), wrong method (405)
        return error_response(request, err.status_code, str(err.detail).lower(), None, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):  # Starlette re-raises it afterwards: uvicorn logs it
        return error_response(request, 500, "internal error", "see the server log")


def _add_page_and_info_routes(app: FastAPI, cfg: ServeConfig, holder: ModelHolder, auth: list) -> None:
    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"cache-control": "no-cache"})

    @app.get("/healthz")
    async def healthz():
        # On the event loop, without a hop to the thread pool and back (under load, each hop waits for
        # Python's GIL), unless the champion changed: loading it takes seconds, so that goes to a thread.
        served = await run_in_threadpool(holder.current) if holder.changed() else holder.served
        if served is None:
            return {"status": "ok", "model": None, "version": None, "reload_error": holder.reload_error}
        return {"status": "ok", "model": str(served.path), "version": served.version, "task": served.model.info.task,
                "providers": served.model.providers, "reload_error": holder.reload_error}  # fmt: skip

    @app.get("/v1/model", dependencies=auth, responses=error_responses(401, 503))
    def model_meta():
        served = holder.require()
        model, info = served.model, served.model.info
        out = {"file": served.path.name, "version": served.version, "task": info.task, "arch": info.arch,
               "image_size": info.image_size, "channels": info.channels, "latent_dim": info.latent_dim,
               "num_classes": info.num_classes, "class_names": info.class_names, "inputs": info.inputs,
               "truncation": info.truncation, "providers": model.providers,
               "loaded_at": served.loaded_at, "metadata": info.metadata,
               "limits": {"max_n": cfg.max_n, "max_upload_bytes": cfg.max_upload_bytes,
                          "max_pixels": cfg.max_pixels, "max_concurrency": cfg.max_concurrency,
                          "max_queue": cfg.max_queue}}  # fmt: skip
        if isinstance(model, OnnxTranslator):
            out.update(direction=model.direction, size_multiple=model.size_multiple, min_size=model.min_size)
        return out


def _openapi_with_labels(app: FastAPI, holder: ModelHolder, request_model: type[GenerateRequest], token: bytes | None):
    """The app's `openapi`: FastAPI's schema, with `labels` and `truncation_psi` as the model being served
    takes them (a new champion may have other classes, or no truncation, so it is rebuilt after a swap)."""
    cache: dict[str, Any] = {}

    def openapi() -> dict:
        served = holder.served  # no reload here: this runs on the event loop
        if "schema" not in cache or cache["served"] is not served:
            app.openapi_schema = None
            schema = FastAPI.openapi(app)
            # From pydantic again: FastAPI's OpenAPI model makes bounds floats, and float(2**63 - 1) is 2**63.
            body = request_model.model_json_schema()
            if served is not None:
                body["properties"]["labels"] = _labels_schema(served.model)
                body["properties"]["truncation_psi"] = _truncation_schema(served.model)
            schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"] = body
            if token is not None:
                bearer = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema.setdefault("components", {})["securitySchemes"] = bearer
                for item in schema["paths"].values():
                    for operation in item.values():
                        if "401" in operation["responses"]:
                            operation["security"] = [{"bearer": []}]
            cache.update(served=served, schema=schema)
        return cache["schema"]

    return openapi


def _add_generate_route(app: FastAPI, holder: ModelHolder, limiter: _Limiter, request_model: type[GenerateRequest],
                        auth: list) -> None:  # fmt: skip
    as_curl_sends_it = {"schema": {"type": "string", "contentMediaType": "application/json",
                                   "description": "the application/json body, sent as `curl -d` does"}}  # fmt: skip
    generate_body = {"required": True, "content": {"application/json": {"schema": request_model.model_json_schema()},
                                                   "application/x-www-form-urlencoded": as_curl_sends_it}}  # fmt: skip
    generated = {"description": "the images: a PNG grid (format png), a NumPy .npy array (npy), or JSON (json)",
                 "headers": {**MODEL_VERSION, "x-seed": {"schema": {"type": "string"}, "required": True}},
                 "content": {"image/png": BINARY, "application/octet-stream": BINARY,
                             "application/json": {"schema": GeneratedArray.model_json_schema()}}}  # fmt: skip

    @app.post("/v1/generate", dependencies=auth, response_class=Response, openapi_extra={"requestBody": generate_body},
              responses={200: generated, **error_responses(400, 401, 408, 409, 413, 415, 422, 503)})  # fmt: skip
    async def generate(request: Request):
        served = await run_in_threadpool(holder.require)  # kept to the end: a swap does not cut this request off
        model = served.model
        if not isinstance(model, OnnxGenerator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/translate")
        if media_type(request) not in ("application/json", "application/x-www-form-urlencoded"):
            raise ApiError(415, "unsupported content type", "send the request as Content-Type: application/json")
        async with limiter.body(request, MAX_JSON_BYTES) as body, limiter.admit():
            req = await run_in_threadpool(parse_json, body, request_model)
            try:
                labels = model.resolve_labels(len(req.seeds) if req.seeds else req.n, req.labels)
            except ModelError as err:
                raise ApiError(400, "bad labels", str(err)) from None
            psi = req.truncation_psi
            if psi is not None and not model.info.truncation:
                raise ApiError(400, "bad truncation_psi", f"truncation_psi: the served model (arch {model.info.arch}) "
                                                          "has no truncation input; leave it out or null")  # fmt: skip

            def work() -> tuple[bytes, str]:
                if req.seeds:  # image i: what n=1, seed=seeds[i] and its label give
                    images = np.concatenate([model.generate(1, seed, None if labels is None else [int(labels[i])],
                                                            truncation_psi=psi)
                                             for i, seed in enumerate(req.seeds)])  # fmt: skip
                else:
                    images = model.generate(req.n, req.seed, req.labels, truncation_psi=psi)
                if req.format == "npy":
                    buf = io.BytesIO()
                    np.save(buf, images)
                    return buf.getvalue(), "application/octet-stream"
                if req.format == "json":
                    as_json = {"shape": list(images.shape), "images": images.round(5).tolist()}
                    return json.dumps(as_json, separators=(",", ":")).encode(), "application/json"
                return png_bytes(make_grid(images, nrow=req.nrow), scale=2), "image/png"

            content, content_type = await limiter.run(work)
        seeds = ",".join(map(str, req.seeds or [req.seed]))
        headers = {"x-model-version": header_value(served.name), "x-seed": seeds}
        return Response(content, media_type=content_type, headers=headers)


async def _uploaded_file(request: Request, body: bytes) -> bytes:
    """The multipart field `file` of a body already read (so within the upload limit), as `curl -F file=@x` sends it."""

    async def chunks():
        yield body

    try:
        form = await MultiPartParser(request.headers, chunks(), max_files=1, max_fields=16).parse()
    except MultiPartException as err:
        raise ApiError(400, "malformed multipart body", err.message) from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "missing field", "send the image as the multipart file field 'file' (curl -F file=@x)")
        return await upload.read()
    finally:
        await form.close()


def _add_translate_route(app: FastAPI, cfg: ServeConfig, holder: ModelHolder, limiter: _Limiter, auth: list) -> None:
    form = {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                       "required": ["file"]},
            "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}}}  # fmt: skip
    translate_body = {"required": True, "content": {**dict.fromkeys(IMAGE_TYPES, BINARY), "multipart/form-data": form}}
    translated = {"description": "the translated image, at the input's size", "headers": MODEL_VERSION,
                  "content": {"image/png": BINARY}}  # fmt: skip

    @app.post("/v1/translate", dependencies=auth, response_class=Response,
              openapi_extra={"requestBody": translate_body},
              responses={200: translated, **error_responses(400, 401, 408, 409, 413, 415, 503)})  # fmt: skip
    async def translate(request: Request):
        served = await run_in_threadpool(holder.require)
        model = served.model
        if not isinstance(model, OnnxTranslator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/generate")
        ctype = media_type(request)
        if not ctype.startswith("image/") and ctype != "multipart/form-data":
            raise ApiError(415, "unsupported content type", f"got {ctype or 'none'!r}; send the image with image/* "
                                                            "or as multipart/form-data")  # fmt: skip
        async with limiter.body(request, cfg.max_upload_bytes) as body, limiter.admit():
            if ctype == "multipart/form-data":
                body = await _uploaded_file(request, body)
            if not body:
                raise ApiError(400, "empty body", "send the image file as the request body")

            def work() -> bytes:
                try:
                    result = model.translate_image(open_image(body, cfg.max_pixels), cfg.max_pixels)
                except ImageRejected as err:
                    if err.too_large:
                        raise ApiError(413, "image too large", str(err)) from None
                    raise ApiError(400, "not an image", str(err)) from None
                out = io.BytesIO()
                result.save(out, format="PNG")
                return out.getvalue()

            png = await limiter.run(work)
        return Response(png, media_type="image/png", headers={"x-model-version": header_value(served.name)})


def create_app(cfg: ServeConfig) -> FastAPI:
    metrics = CollectorRegistry()
    requests = Counter("ganpipe_requests", "HTTP requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram("ganpipe_request_seconds", "request latency", ["endpoint"], registry=metrics,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
    reloads = Counter("ganpipe_model_reloads", "champion changes picked up", ["result"], registry=metrics)
    limiter = _Limiter(
        cfg,
        Gauge("ganpipe_inference_admitted", "model requests admitted (their bodies read): waiting or running",
              registry=metrics),
        Gauge("ganpipe_inference_running", "inferences running", registry=metrics),
        Gauge("ganpipe_request_body_bytes", "bytes of model request bodies being read or held", registry=metrics),
    )  # fmt: skip
    request_model = _request_model(cfg.max_n)
    holder = ModelHolder(cfg, on_reload=lambda ok: reloads.labels("ok" if ok else "failed").inc())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await run_in_threadpool(decode.shutdown)  # the processes that parse large /v2 bodies

    # /docs: Swagger UI from the files fastapi-offline ships, served by this app (FastAPI's own loads them from a CDN)
    app = FastAPIOffline(title="ganpipe", redoc_url=None, openapi_url="/openapi.json",
                         swagger_ui_parameters={"validatorUrl": None}, lifespan=lifespan)  # fmt: skip
    app.add_middleware(_Instrument, requests=requests, latency=latency)
    app.state.holder, app.state.cfg = holder, cfg
    token = cfg.token.encode() if cfg.token else None

    def require_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise ApiError(401, "unauthorized", f"send 'Authorization: Bearer <token>' ({TOKEN_ENV})",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    _add_error_handlers(app)
    app.openapi = _openapi_with_labels(app, holder, request_model, token)
    auth = [Depends(require_token)]
    # Routes are added in the order that /openapi.json lists their paths.
    _add_page_and_info_routes(app, cfg, holder, auth)
    _add_generate_route(app, holder, limiter, request_model, auth)
    _add_translate_route(app, cfg, holder, limiter, auth)
    add_oip_routes(app, cfg, holder, limiter, auth)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def http_protocol(header_timeout_s: float) -> type:
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline on each request's line and headers.

    Hand-written: uvicorn (0.55) has no such setting. Its timeout_keep_alive closes a connection
    that sends nothing, but every byte received cancels it, so a client that sends its headers a
    byte every few seconds held its socket for ever. Here the head of each request (counted from
    the connection, or from the end of the previous response) must be complete within
    header_timeout_s, or the connection is closed; so is one still sending a body after its answer
    (say a 413 or a 415). A body the app is reading is the app's to time out (408)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            # asyncio turns Nagle off only on sockets whose proto is IPPROTO_TCP, and sockets accepted
            # from serve()'s listening socket (socket.create_server) have proto 0: each response's body
            # waited for the ACK of its headers, which clients delay by 40 ms.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout_s, self._expire)

        def _expire(self) -> None:
            self._deadline = None
            waiting_for_head = self.conn.their_state is h11.IDLE
            unwanted_body = self.conn.their_state is h11.SEND_BODY and self.conn.our_state is not h11.SEND_RESPONSE
            if (waiting_for_head or unwanted_body) and not self.transport.is_closing():
                log.info("closing a connection from %s: no complete request within %g s", self.client,
                         header_timeout_s)  # fmt: skip
                self.transport.close()

    return TimedH11Protocol


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **settings) -> Any:
    """uvicorn's Config for an app of create_app, with the service's connection timeouts."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=http_protocol(app.state.cfg.header_timeout_s),
                          **settings)  # fmt: skip


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM: requests in flight are finished first)."""
    import uvicorn

    try:  # bound before anything is announced or loaded: a busy port is one line and a non-zero exit
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as err:
        reason = os.strerror(err.errno) if (err.errno or 0) > 0 else err.strerror  # without "(while attempting...)"
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"

    class Server(uvicorn.Server):  # uvicorn says where it listens only on the sockets it binds itself
        async def startup(self, sockets=None):
            await super().startup(sockets)
            logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", url)

    with sock:
        _release_freed_memory()
        app = create_app(cfg)
        served = app.state.holder.served
        print(json.dumps({"serving": served and str(served.path), "version": served and served.version,
                          "task": served and served.model.info.task, "token_required": bool(cfg.token),
                          "url": url}), flush=True)  # fmt: skip
        if not cfg.token and host not in LOOPBACK:
            log.warning("listening on %s without %s: anyone who can reach this port can use the model", host, TOKEN_ENV)
        config = server_config(app, host=host, port=sock.getsockname()[1], log_level="info",
                               timeout_graceful_shutdown=10)  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):  # re-raised by uvicorn once it has shut down (as uvicorn.run does)
            Server(config).run(sockets=[sock])
