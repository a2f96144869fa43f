"""`ganpipe serve`: an HTTP service over ONNX Runtime for the exported generators.

FastAPI and uvicorn are already installed through Prefect. Endpoints:
  GET  /              a self-contained page to try the model (no CDN)
  GET  /healthz       liveness, and which model is loaded (never needs the token)
  GET  /v1/model      the model's ganpipe.* metadata, its registry version, the service's limits
  POST /v1/generate   JSON {n, seed, labels, format: png|npy|json, nrow} -> PNG grid (or the array)
  POST /v1/translate  an image as the request body (Content-Type image/*) -> PNG
  GET  /metrics       Prometheus text: requests by endpoint and status, latency, model reloads,
                      inference requests admitted and running
  GET  /openapi.json  the API, with every error status, media type and limit it really has

Every bad request gets a 4xx JSON body {"error": ..., "detail": ...} and the service keeps
serving. Bodies are read with a size limit before anything is parsed. A client that goes away
while its request is being read is counted with status 499 (nginx's "client closed request"),
not as a server error. Inference runs in the thread pool, never on the event loop, on one ONNX
Runtime session per model (its `run` is thread-safe), at most `max_concurrency` at once: the
memory of a translation grows with its pixels, so concurrency is what bounds the peak. Requests
to the model endpoints are admitted before their bodies are read, at most `max_concurrency +
max_queue` at once (so that at most that many bodies are held in memory); beyond that they get
503 with Retry-After at once rather than waiting in an unbounded queue.

With a registry, the champion is served and reloaded when the champion pointer changes: the
new session is built first and then swapped in, so requests in flight finish on the model they
started with; a champion that cannot be loaded leaves the old one serving.
Responses from the model carry `X-Model-Version` (the registry version, or the file name).
"""

from __future__ import annotations

import asyncio
import ctypes
import hmac
import io
import json
import logging
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, ValidationError, create_model
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pipeline.errors import UserError
from pipeline.grid import make_grid, png_bytes
from pipeline.inference import (
    IMAGE_FORMATS,
    ImageRejected,
    ModelError,
    OnnxGenerator,
    OnnxTranslator,
    open_image,
    open_model,
)

TOKEN_ENV = "GANPIPE_SERVE_TOKEN"
PAGE = Path(__file__).with_name("page.html")
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer: in metrics only, never sent
RETRY_AFTER_S = 1
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

    def __post_init__(self):
        if self.max_concurrency < 1 or self.max_queue < 0:
            raise UserError(f"max_concurrency must be >= 1 and max_queue >= 0, got {self.max_concurrency} "
                            f"and {self.max_queue}")  # fmt: skip


class ApiError(Exception):
    """A refused request, answered with `status` and {"error": error, "detail": detail}."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's "integer" is any number without a fractional part, 3.0 included; strings and booleans are not.
JsonInt = Annotated[StrictInt, BeforeValidator(_whole_number)]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: JsonInt = Field(16, ge=1, description="number of images")  # le: the service's max_n, see _request_model
    seed: JsonInt = Field(0, ge=0, le=2**63 - 1)
    labels: list[StrictStr | JsonInt] | None = Field(None, description="class names or indices, cycled")
    format: Literal["png", "npy", "json"] = "png"
    # bounds inside Annotated: given to Field, pydantic writes them into this anyOf as "ge"/"le", not JSON Schema
    nrow: Annotated[StrictInt, Field(ge=1, le=64), BeforeValidator(_whole_number)] | None = None


def _request_model(max_n: int) -> type[GenerateRequest]:
    """GenerateRequest with `n` bounded by this service's max_n, so that the schema states the bound."""
    n = (JsonInt, Field(min(16, max_n), ge=1, le=max_n, description=f"number of images, 1 to {max_n}"))
    return create_model("GenerateRequest", __base__=GenerateRequest, n=n)


class ErrorBody(BaseModel):
    """Every refused request's body."""

    error: str = Field(description="what went wrong, in a few stable words")
    detail: Any = Field(description="why: a sentence, or a list of {field, problem}")


class GeneratedArray(BaseModel):
    """/v1/generate with format json."""

    shape: list[int] = Field(description="[n, channels, height, width]")
    images: list[Any] = Field(description="nested lists of that shape, values in [-1, 1]")


BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_TYPES = [f"image/{fmt.lower()}" for fmt in IMAGE_FORMATS]  # what the decoder reads; any image/* type is let in
MODEL_VERSION = {"x-model-version": {"description": "the registry version, or the model file's name",
                                    "schema": {"type": "string"}, "required": True}}  # fmt: skip


def _errors(*statuses: int) -> dict[int, dict]:
    """The OpenAPI responses of those error statuses, each with the ErrorBody schema."""
    why = {
        400: "the body cannot be read: malformed JSON, not an image, unknown labels",
        401: "a bearer token is required (the service was started with one) and was missing or wrong",
        409: "the served model is for the other endpoint",
        413: "the body or the image is too large",
        415: "wrong Content-Type",
        422: "the JSON does not match the request schema",
        503: "overloaded: as many requests as the service admits are in progress; retry after Retry-After",
    }
    out: dict[int, dict] = {s: {"model": ErrorBody, "description": why[s]} for s in statuses}
    if 401 in out:
        out[401]["headers"] = {"www-authenticate": {"schema": {"type": "string"}, "required": True}}
    if 503 in out:
        out[503]["headers"] = {"retry-after": {"description": "seconds", "schema": {"type": "integer", "minimum": 0},
                                               "required": True}}  # fmt: skip
    return out


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
        from pipeline.registry import Registry, RegistryError

        self.registry = Registry(cfg.registry)
        self.pointer = self.registry.root / "champion"
        self._stamp = _pointer_stamp(self.pointer)
        version = self.registry.champion()
        if version is None:
            raise RegistryError(f"{self.registry.root}: no champion to serve (ganpipe registry promote, or --model)")
        self._served = self._load(self.registry.model_path(version, cfg.direction), version)

    @property
    def served(self) -> Served:
        """The model in force, without looking at the registry."""
        return self._served

    def current(self) -> Served:
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
            version = self.registry.champion()
            if version is None:
                raise UserError(f"{self.pointer}: the champion pointer is gone")
            if version == self._served.version:  # e.g. rolled back to the model still in service
                self.reload_error = None
                return
            fresh = self._load(self.registry.model_path(version, self.cfg.direction), version)
        except UserError as err:  # a broken champion must not take the service down
            self.reload_error = str(err)
            log.error("still serving %s: the new champion cannot be loaded: %s", self._served.name, err)
            if self.on_reload:
                self.on_reload(False)
            return
        self._served, self.reload_error = fresh, None  # one assignment: the swap
        log.info("now serving %s (%s)", fresh.name, fresh.path)
        if self.on_reload:
            self.on_reload(True)

    def _load(self, path: Path, version: str | None) -> Served:
        return Served(open_model(path, self.cfg.device), path, version, time.time())


def _error(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _problems(errors: list[dict]) -> list[dict]:
    return [{"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "problem": e["msg"]}
            for e in errors]  # fmt: skip


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is declared or found to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "upload too large", f"{declared} bytes > {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "upload too large", f"more than {limit} bytes")
    return bytes(body)


def _parse_generate(body: bytes, model: type[GenerateRequest]) -> GenerateRequest:
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, "malformed JSON", [{"field": "body", "problem": str(err)}]) from None
    except ValueError as err:  # valid JSON that Python will not parse: an integer of more than 4300 digits
        raise ApiError(400, "unsupported JSON", [{"field": "body", "problem": str(err)}]) from None
    except RecursionError:
        problem = f"arrays or objects nested too deep (more than {sys.getrecursionlimit()} levels)"
        raise ApiError(400, "unsupported JSON", [{"field": "body", "problem": problem}]) from None
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ApiError(422, "invalid request", _problems(err.errors())) from None


class _Limiter:
    """Admission to the model endpoints and the inference slots (see the module's docstring)."""

    def __init__(self, cfg: ServeConfig, admitted: Gauge, running: Gauge):
        self.capacity = cfg.max_concurrency + cfg.max_queue
        self.slots = asyncio.Semaphore(cfg.max_concurrency)
        self.admitted, self.running = admitted, running
        self._count = 0  # only touched on the event loop: no lock

    @asynccontextmanager
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
    async def api_error(_: Request, err: ApiError):
        return _error(err.status, err.error, err.detail, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        return _error(422, "invalid request", _problems(err.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):  # unknown path (404), wrong method (405)
        return _error(err.status_code, str(err.detail).lower(), None, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception):  # Starlette re-raises it afterwards: uvicorn logs the traceback
        return _error(500, "internal error", "see the server log")


def _add_page_and_info_routes(app: FastAPI, cfg: ServeConfig, holder: ModelHolder, auth: list) -> None:
    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"cache-control": "no-cache"})

    @app.get("/healthz")
    def healthz():
        served = holder.current()
        return {"status": "ok", "model": str(served.path), "version": served.version, "task": served.model.info.task,
                "providers": served.model.providers, "reload_error": holder.reload_error}  # fmt: skip

    @app.get("/v1/model", dependencies=auth, responses=_errors(401))
    def model_meta():
        served = holder.current()
        model, info = served.model, served.model.info
        out = {"file": served.path.name, "version": served.version, "task": info.task, "arch": info.arch,
               "image_size": info.image_size, "channels": info.channels, "latent_dim": info.latent_dim,
               "num_classes": info.num_classes, "class_names": info.class_names, "providers": model.providers,
               "loaded_at": served.loaded_at, "metadata": info.metadata,
               "limits": {"max_n": cfg.max_n, "max_upload_bytes": cfg.max_upload_bytes,
                          "max_pixels": cfg.max_pixels, "max_concurrency": cfg.max_concurrency,
                          "max_queue": cfg.max_queue}}  # fmt: skip
        if isinstance(model, OnnxTranslator):
            out.update(direction=model.direction, size_multiple=model.size_multiple, min_size=model.min_size)
        return out


def _openapi_with_labels(app: FastAPI, holder: ModelHolder, request_model: type[GenerateRequest], token: bytes | None):
    """The app's `openapi`: FastAPI's schema, with `labels` as the model being served takes them
    (a new champion may have other classes, so it is rebuilt after a swap)."""
    cache: dict[str, Any] = {}

    def openapi() -> dict:
        served = holder.served  # no reload here: this runs on the event loop
        if cache.get("served") is not served:
            app.openapi_schema = None
            schema = FastAPI.openapi(app)
            # From pydantic again: FastAPI's OpenAPI model makes bounds floats, and float(2**63 - 1) is 2**63.
            body = request_model.model_json_schema()
            body["properties"]["labels"] = _labels_schema(served.model)
            schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"] = body
            if token is not None:
                bearer = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema.setdefault("components", {})["securitySchemes"] = bearer
                for path, item in schema["paths"].items():
                    if path.startswith("/v1/"):
                        for operation in item.values():
                            operation["security"] = [{"bearer": []}]
            cache.update(served=served, schema=schema)
        return cache["schema"]

    return openapi


def _add_generate_route(app: FastAPI, holder: ModelHolder, limiter: _Limiter, request_model: type[GenerateRequest],
                        auth: list) -> None:  # fmt: skip
    generate_body = {"required": True, "content": {"application/json": {"schema": request_model.model_json_schema()}}}
    generated = {"description": "the images: a PNG grid (format png), a NumPy .npy array (npy), or JSON (json)",
                 "headers": {**MODEL_VERSION, "x-seed": {"schema": {"type": "string"}, "required": True}},
                 "content": {"image/png": BINARY, "application/octet-stream": BINARY,
                             "application/json": {"schema": GeneratedArray.model_json_schema()}}}  # fmt: skip

    @app.post("/v1/generate", dependencies=auth, response_class=Response, openapi_extra={"requestBody": generate_body},
              responses={200: generated, **_errors(400, 401, 409, 413, 415, 422, 503)})  # fmt: skip
    async def generate(request: Request):
        served = await run_in_threadpool(holder.current)  # kept to the end: a swap does not cut this request off
        model = served.model
        if not isinstance(model, OnnxGenerator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/translate")
        if _media_type(request) != "application/json":
            raise ApiError(415, "unsupported content type", "send the request as Content-Type: application/json")
        async with limiter.admit():
            req = _parse_generate(await _read_body(request, MAX_JSON_BYTES), request_model)
            try:
                model.resolve_labels(req.n, req.labels)
            except ModelError as err:
                raise ApiError(400, "bad labels", str(err)) from None

            def work() -> tuple[bytes, str]:
                images = model.generate(req.n, req.seed, req.labels)
                if req.format == "npy":
                    buf = io.BytesIO()
                    np.save(buf, images)
                    return buf.getvalue(), "application/octet-stream"
                if req.format == "json":
                    as_json = {"shape": list(images.shape), "images": images.round(5).tolist()}
                    return json.dumps(as_json, separators=(",", ":")).encode(), "application/json"
                return png_bytes(make_grid(images, nrow=req.nrow), scale=2), "image/png"

            content, media_type = await limiter.run(work)
        headers = {"x-model-version": served.name, "x-seed": str(req.seed)}
        return Response(content, media_type=media_type, headers=headers)


def _add_translate_route(app: FastAPI, cfg: ServeConfig, holder: ModelHolder, limiter: _Limiter, auth: list) -> None:
    translate_body = {"required": True, "content": dict.fromkeys(IMAGE_TYPES, BINARY)}
    translated = {"description": "the translated image, at the input's size", "headers": MODEL_VERSION,
                  "content": {"image/png": BINARY}}  # fmt: skip

    @app.post("/v1/translate", dependencies=auth, response_class=Response,
              openapi_extra={"requestBody": translate_body},
              responses={200: translated, **_errors(400, 401, 409, 413, 415, 503)})  # fmt: skip
    async def translate(request: Request):
        served = await run_in_threadpool(holder.current)
        model = served.model
        if not isinstance(model, OnnxTranslator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/generate")
        ctype = _media_type(request)
        if not ctype.startswith("image/"):
            raise ApiError(415, "unsupported content type", f"got {ctype or 'none'!r}; send the image with image/*")
        async with limiter.admit():
            body = await _read_body(request, cfg.max_upload_bytes)
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
        return Response(png, media_type="image/png", headers={"x-model-version": served.name})


def create_app(cfg: ServeConfig) -> FastAPI:
    metrics = CollectorRegistry()
    requests = Counter("ganpipe_requests", "HTTP requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram("ganpipe_request_seconds", "request latency", ["endpoint"], registry=metrics,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
    reloads = Counter("ganpipe_model_reloads", "champion changes picked up", ["result"], registry=metrics)
    limiter = _Limiter(
        cfg,
        Gauge("ganpipe_inference_admitted", "model requests in progress: being read, waiting or running",
              registry=metrics),
        Gauge("ganpipe_inference_running", "inferences running", registry=metrics),
    )  # fmt: skip
    request_model = _request_model(cfg.max_n)
    holder = ModelHolder(cfg, on_reload=lambda ok: reloads.labels("ok" if ok else "failed").inc())
    app = FastAPI(title="ganpipe", docs_url=None, redoc_url=None, openapi_url="/openapi.json")  # Swagger UI needs a CDN
    app.add_middleware(_Instrument, requests=requests, latency=latency)
    app.state.holder = holder
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

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM: requests in flight are finished first)."""
    import uvicorn

    _release_freed_memory()
    app = create_app(cfg)
    served = app.state.holder.served
    print(json.dumps({"serving": str(served.path), "version": served.version, "task": served.model.info.task,
                      "token_required": bool(cfg.token)}), flush=True)  # fmt: skip
    if not cfg.token and host not in LOOPBACK:
        log.warning("listening on %s without %s: anyone who can reach this port can use the model", host, TOKEN_ENV)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
