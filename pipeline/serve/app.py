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

The routes are FastAPI routers, one module each: pages.py (/), v1.py (/v1), oip.py (/v2) and
monitoring.py (/healthz, /metrics); they get this app's config, model holder (holder.py), limiter
(limits.py) and token check through the dependencies of deps.py. create_app assembles them;
serve() runs the app under uvicorn (server.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import UserError
from pipeline.serve import decode, oip, pages, v1
from pipeline.serve.common import ApiError, error_response, problems
from pipeline.serve.config import TOKEN_ENV, ServeConfig
from pipeline.serve.holder import ModelHolder
from pipeline.serve.limits import Limiter
from pipeline.serve.monitoring import Instrument, Metrics, health, metrics
from pipeline.serve.schemas import openapi_with_labels, request_model
from pipeline.serve.server import release_freed_memory, server_config

__all__ = ["ServeConfig", "create_app", "serve", "server_config"]  # what callers import from here

LOOPBACK = ("127.0.0.1", "localhost", "::1")

log = logging.getLogger("ganpipe.serve")


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


def create_app(cfg: ServeConfig) -> FastAPI:
    """The service for `cfg`: its model loaded (or, with a registry without a champion, none yet) and its
    state on app.state, where the routers' dependencies (deps.py) find it."""
    metrics_ = Metrics()
    holder = ModelHolder(cfg, on_reload=metrics_.reloaded)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await run_in_threadpool(decode.shutdown)  # the processes that parse large /v2 bodies

    # /docs: Swagger UI from the files fastapi-offline ships, served by this app (FastAPI's own loads them from a CDN)
    app = FastAPIOffline(title="ganpipe", redoc_url=None, openapi_url="/openapi.json",
                         swagger_ui_parameters={"validatorUrl": None}, lifespan=lifespan)  # fmt: skip
    app.add_middleware(Instrument, requests=metrics_.requests, latency=metrics_.latency)
    app.state.cfg, app.state.holder, app.state.metrics = cfg, holder, metrics_
    app.state.limiter = Limiter(cfg, metrics_.admitted, metrics_.running, metrics_.buffered)
    app.state.request_model = request_model(cfg.max_n)
    _add_error_handlers(app)
    app.openapi = openapi_with_labels(app)
    # Routers are included in the order that /openapi.json lists their paths.
    for router in (pages.router, health, v1.router, oip.router, metrics):
        app.include_router(router)
    return app


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
        release_freed_memory()
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
