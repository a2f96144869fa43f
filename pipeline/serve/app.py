"""`ganpipe serve`: an HTTP service over ONNX Runtime for the exported generators.

FastAPI and uvicorn are already installed through Prefect. Endpoints:
  GET  /              a self-contained page to try the model (no CDN)
  GET  /healthz       liveness, and which model is loaded (never needs the token)
  GET  /v1/model      the model's ganpipe.* metadata, its registry version, the service's limits
  POST /v1/generate   JSON {n, seed, labels, format: png|npy|json, nrow} -> PNG grid (or the array)
  POST /v1/translate  an image as the request body (Content-Type image/*) -> PNG
  GET  /metrics       Prometheus text: requests by endpoint and status, latency, model reloads

Every bad request gets a 4xx JSON body {"error": ..., "detail": ...} and the service keeps
serving. Bodies are read with a size limit before anything is parsed. Inference runs in the
thread pool, never on the event loop, on one ONNX Runtime session per model (its `run` is
thread-safe). With a registry, the champion is served and reloaded when the champion pointer
changes: the new session is built first and then swapped in, so requests in flight finish on
the model they started with; a champion that cannot be loaded leaves the old one serving.
Responses from the model carry `X-Model-Version` (the registry version, or the file name).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import UserError
from pipeline.grid import make_grid, png_bytes
from pipeline.inference import ModelError, OnnxGenerator, OnnxTranslator, open_model

TOKEN_ENV = "GANPIPE_SERVE_TOKEN"
PAGE = Path(__file__).with_name("page.html")
# Decoders an upload may reach: plain raster formats only (Pillow hands EPS to Ghostscript, for one).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
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


class ApiError(Exception):
    """A refused request, answered with `status` and {"error": error, "detail": detail}."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: StrictInt = Field(16, description="number of images")
    seed: StrictInt = Field(0, ge=0, le=2**63 - 1)
    labels: list[StrictStr | StrictInt] | None = Field(None, description="class names or indices, cycled")
    format: Literal["png", "npy", "json"] = "png"
    nrow: StrictInt | None = Field(None, ge=1, le=64)


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


def _parse_generate(body: bytes) -> GenerateRequest:
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, "malformed JSON", [{"field": "body", "problem": str(err)}]) from None
    try:
        return GenerateRequest.model_validate(raw)
    except ValidationError as err:
        raise ApiError(422, "invalid request", _problems(err.errors())) from None


def _decode_upload(body: bytes, max_pixels: int) -> Image.Image:
    """Decode an upload, refusing non-images (400) and, from the header alone, before any pixel
    is decompressed, images over `max_pixels` (413: the decompression-bomb guard)."""
    if not body:
        raise ApiError(400, "empty body", "send the image file as the request body")
    try:
        img = Image.open(io.BytesIO(body), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ApiError(400, "not an image", f"the body is not a {', '.join(IMAGE_FORMATS)} image") from None
    except Image.DecompressionBombError as err:
        raise ApiError(413, "image too large", str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, "cannot decode image", str(err)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise ApiError(413, "image too large", f"{w}x{h} = {w * h} pixels > {max_pixels} (decompression-bomb guard)")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, "cannot decode image", str(err)) from None
    return img


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
        finally:
            endpoint = getattr(scope.get("route"), "path", None) or "other"
            self.requests.labels(endpoint, str(status)).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - start)


def create_app(cfg: ServeConfig) -> FastAPI:
    metrics = CollectorRegistry()
    requests = Counter("ganpipe_requests", "HTTP requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram("ganpipe_request_seconds", "request latency", ["endpoint"], registry=metrics,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
    reloads = Counter("ganpipe_model_reloads", "champion changes picked up", ["result"], registry=metrics)
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

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"cache-control": "no-cache"})

    @app.get("/healthz")
    def healthz():
        served = holder.current()
        return {"status": "ok", "model": str(served.path), "version": served.version, "task": served.model.info.task,
                "providers": served.model.providers, "reload_error": holder.reload_error}  # fmt: skip

    auth = [Depends(require_token)]

    @app.get("/v1/model", dependencies=auth)
    def model_meta():
        served = holder.current()
        model, info = served.model, served.model.info
        out = {"file": served.path.name, "version": served.version, "task": info.task, "arch": info.arch,
               "image_size": info.image_size, "channels": info.channels, "latent_dim": info.latent_dim,
               "num_classes": info.num_classes, "class_names": info.class_names, "providers": model.providers,
               "loaded_at": served.loaded_at, "metadata": info.metadata,
               "limits": {"max_n": cfg.max_n, "max_upload_bytes": cfg.max_upload_bytes,
                          "max_pixels": cfg.max_pixels}}  # fmt: skip
        if isinstance(model, OnnxTranslator):
            out.update(direction=model.direction, size_multiple=model.size_multiple, min_size=model.min_size)
        return out

    generate_body = {"content": {"application/json": {"schema": GenerateRequest.model_json_schema()}}}

    @app.post("/v1/generate", dependencies=auth, openapi_extra={"requestBody": generate_body})
    async def generate(request: Request):
        served = await run_in_threadpool(holder.current)  # kept to the end: a swap does not cut this request off
        model = served.model
        if not isinstance(model, OnnxGenerator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/translate")
        if _media_type(request) != "application/json":
            raise ApiError(415, "unsupported content type", "send the request as Content-Type: application/json")
        req = _parse_generate(await _read_body(request, MAX_JSON_BYTES))
        if not 1 <= req.n <= cfg.max_n:
            raise ApiError(422, "invalid request", [{"field": "n", "problem": f"must be between 1 and {cfg.max_n}"}])
        try:
            model.resolve_labels(req.n, req.labels)
        except ModelError as err:
            raise ApiError(400, "bad labels", str(err)) from None
        images = await run_in_threadpool(model.generate, req.n, req.seed, req.labels)
        headers = {"x-model-version": served.name, "x-seed": str(req.seed)}
        if req.format == "npy":
            buf = io.BytesIO()
            np.save(buf, images)
            return Response(buf.getvalue(), media_type="application/octet-stream", headers=headers)
        if req.format == "json":
            return JSONResponse({"shape": list(images.shape), "images": images.round(5).tolist()}, headers=headers)
        png = await run_in_threadpool(lambda: png_bytes(make_grid(images, nrow=req.nrow), scale=2))
        return Response(png, media_type="image/png", headers=headers)

    @app.post("/v1/translate", dependencies=auth)
    async def translate(request: Request):
        served = await run_in_threadpool(holder.current)
        model = served.model
        if not isinstance(model, OnnxTranslator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/generate")
        ctype = _media_type(request)
        if not ctype.startswith("image/"):
            raise ApiError(415, "unsupported content type", f"got {ctype or 'none'!r}; send the image with image/*")
        body = await _read_body(request, cfg.max_upload_bytes)

        def work() -> bytes:  # decoding and inference stay off the event loop
            out = io.BytesIO()
            model.translate_image(_decode_upload(body, cfg.max_pixels)).save(out, format="PNG")
            return out.getvalue()

        return Response(await run_in_threadpool(work), media_type="image/png",
                        headers={"x-model-version": served.name})  # fmt: skip

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM: requests in flight are finished first)."""
    import uvicorn

    app = create_app(cfg)
    served = app.state.holder.served
    print(json.dumps({"serving": str(served.path), "version": served.version, "task": served.model.info.task,
                      "token_required": bool(cfg.token)}), flush=True)  # fmt: skip
    if not cfg.token and host not in LOOPBACK:
        log.warning("listening on %s without %s: anyone who can reach this port can use the model", host, TOKEN_ENV)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
