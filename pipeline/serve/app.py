"""`ganpipe serve`: an HTTP service over ONNX Runtime for the exported generators.

FastAPI and uvicorn are already installed through Prefect. Endpoints:
  GET  /              a self-contained page to try the model (no CDN)
  GET  /healthz       liveness, and which model is loaded
  GET  /v1/model      the model's ganpipe.* metadata
  POST /v1/generate   JSON {n, seed, labels, format: png|npy|json} -> PNG grid (or the array)
  POST /v1/translate  an image as the request body (Content-Type image/*) -> PNG
  GET  /metrics       Prometheus text: requests by endpoint and status, latency histogram

Every bad request gets a 4xx JSON body {"error": ..., "detail": ...} and the service keeps
serving. With a registry, the champion is served and reloaded when the champion pointer
changes: the new session is built first and then swapped in, so requests in flight finish
on the model they started with. ONNX Runtime sessions are safe to share between threads.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from pipeline.grid import make_grid, png_bytes
from pipeline.inference import ModelError, OnnxGenerator, OnnxTranslator, create_session, model_info

TOKEN_ENV = "GANPIPE_SERVE_TOKEN"
PAGE = Path(__file__).with_name("page.html")


@dataclass
class ServeConfig:
    model: Path | None = None  # a fixed ONNX file; None = the registry's champion
    registry: Path = Path("registry")
    direction: str = "AB"  # which translator of a CycleGAN champion to serve
    max_n: int = 64
    max_upload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    device: str = "auto"
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)
    reload_check_s: float = 0.5


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None):
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: StrictInt = Field(16, description="number of images")
    seed: StrictInt = Field(0, ge=0, le=2**63 - 1)
    labels: list[StrictStr | StrictInt] | None = Field(None, description="class names or indices, cycled")
    format: Literal["png", "npy", "json"] = "png"
    nrow: StrictInt | None = Field(None, ge=1, le=64)


def _load(path: Path, device: str) -> OnnxGenerator | OnnxTranslator:
    task = model_info(create_session(path, "cpu"), path).task
    return OnnxGenerator(path, device) if task == "generate" else OnnxTranslator(path, device)


class ModelHolder:
    """The model being served, swapped atomically when the registry's champion changes."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._checked = 0.0
        self._pointer: tuple[int, str] | None = None
        self.path, self.model = self._resolve(), None
        self.model = _load(self.path, cfg.device)
        self.loaded_at = time.time()

    def _champion_pointer(self) -> tuple[int, str] | None:
        pointer = self.cfg.registry / "champion"
        try:
            return pointer.stat().st_mtime_ns, pointer.read_text().strip()
        except OSError:
            return None

    def _resolve(self) -> Path:
        if self.cfg.model is not None:
            return self.cfg.model
        from pipeline.registry import Registry

        self._pointer = self._champion_pointer()
        return Registry(self.cfg.registry).model_path(direction=self.cfg.direction)

    def current(self) -> OnnxGenerator | OnnxTranslator:
        """The model for this request: a reference taken now, kept by the request to its end."""
        if self.cfg.model is None and time.monotonic() - self._checked > self.cfg.reload_check_s:
            self._checked = time.monotonic()
            if self._champion_pointer() != self._pointer and self._lock.acquire(blocking=False):
                try:
                    path = self._resolve()
                    fresh = _load(path, self.cfg.device)  # built before the swap; the old one keeps serving
                    self.path, self.model, self.loaded_at = path, fresh, time.time()
                finally:
                    self._lock.release()
        return self.model


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _decode_upload(body: bytes, max_pixels: int) -> Image.Image:
    if not body:
        raise ApiError(400, "empty body", "send the image file as the request body")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))
            if img.size[0] * img.size[1] > max_pixels:
                raise Image.DecompressionBombError("too many pixels")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "image too large", f"more than {max_pixels} pixels (decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise ApiError(400, "not an image", "the body is not an image any decoder recognises") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, "cannot decode image", str(err)) from None
    return img


def create_app(cfg: ServeConfig) -> FastAPI:
    holder = ModelHolder(cfg)
    metrics = CollectorRegistry()
    requests = Counter("ganpipe_requests", "HTTP requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram("ganpipe_request_seconds", "request latency", ["endpoint"], registry=metrics,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
    app = FastAPI(title="ganpipe", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.holder = holder

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        route = request.url.path if request.url.path in _ROUTES else "other"
        authorised = request.headers.get("authorization", "") == f"Bearer {cfg.token}"
        if cfg.token and route.startswith("/v1/") and not authorised:
            requests.labels(route, "401").inc()
            return _error(401, "unauthorized", f"send 'Authorization: Bearer <token>' ({TOKEN_ENV})")
        response = await call_next(request)
        requests.labels(route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError):
        return _error(err.status, err.error, err.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        problems = [{"field": ".".join(str(p) for p in e["loc"][1:]) or "body", "problem": e["msg"]}
                    for e in err.errors()]  # fmt: skip
        if any(e["type"] == "json_invalid" for e in err.errors()):
            return _error(400, "malformed JSON", problems)
        return _error(422, "invalid request", problems)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE.read_text())

    @app.get("/healthz")
    def healthz():
        model = holder.current()
        return {"status": "ok", "model": str(holder.path), "task": model.info.task, "providers": model.providers}

    @app.get("/v1/model")
    def model_meta():
        model = holder.current()
        info = model.info
        out = {"file": holder.path.name, "task": info.task, "arch": info.arch, "image_size": info.image_size,
               "channels": info.channels, "latent_dim": info.latent_dim, "num_classes": info.num_classes,
               "class_names": info.class_names, "providers": model.providers, "loaded_at": holder.loaded_at,
               "metadata": info.metadata, "limits": {"max_n": cfg.max_n, "max_upload_bytes": cfg.max_upload_bytes,
                                                     "max_pixels": cfg.max_pixels}}  # fmt: skip
        if isinstance(model, OnnxTranslator):
            out.update(direction=model.direction, size_multiple=model.size_multiple)
        return out

    @app.post("/v1/generate")
    def generate(req: GenerateRequest):
        model = holder.current()
        if not isinstance(model, OnnxGenerator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/translate")
        if not 1 <= req.n <= cfg.max_n:
            raise ApiError(422, "invalid request", [{"field": "n", "problem": f"must be between 1 and {cfg.max_n}"}])
        try:
            images = model.generate(req.n, seed=req.seed, labels=req.labels)
        except ModelError as err:
            raise ApiError(400, "bad labels", str(err)) from None
        if req.format == "npy":
            buf = io.BytesIO()
            np.save(buf, images)
            return Response(buf.getvalue(), media_type="application/octet-stream")
        if req.format == "json":
            return {"shape": list(images.shape), "images": images.round(5).tolist()}
        return Response(png_bytes(make_grid(images, nrow=req.nrow), scale=2), media_type="image/png")

    @app.post("/v1/translate")
    async def translate(request: Request):
        model = holder.current()
        if not isinstance(model, OnnxTranslator):
            raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/generate")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not ctype.startswith("image/"):
            raise ApiError(415, "unsupported content type", f"got {ctype or 'none'!r}; send the image with image/*")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_upload_bytes:
            raise ApiError(413, "upload too large", f"{declared} bytes > {cfg.max_upload_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_upload_bytes:
                raise ApiError(413, "upload too large", f"more than {cfg.max_upload_bytes} bytes")
        img = _decode_upload(bytes(body), cfg.max_pixels)
        out = model.translate_image(img)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


_ROUTES = {"/", "/healthz", "/v1/model", "/v1/generate", "/v1/translate", "/metrics"}


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    app = create_app(cfg)
    print(json.dumps({"serving": str(app.state.holder.path), "url": f"http://{host}:{port}/"}))
    uvicorn.run(app, host=host, port=port, log_level="info")
