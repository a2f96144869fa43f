"""What watches the service: its Prometheus metrics, the middleware that counts and times every
request, and the routes /healthz and /metrics (neither needs the token)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pipeline.serve.deps import Holder

CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer: in metrics only, never sent

log = logging.getLogger("ganpipe.serve")


class Metrics:
    """One app's metrics, in a registry of its own (apps in one process, as in the tests, count apart)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("ganpipe_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
        self.latency = Histogram("ganpipe_request_seconds", "request latency", ["endpoint"], registry=registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
        self.reloads = Counter("ganpipe_model_reloads", "champion changes picked up", ["result"], registry=registry)
        self.admitted = Gauge("ganpipe_inference_admitted", "model requests admitted (their bodies read): waiting "
                                                            "or running", registry=registry)  # fmt: skip
        self.running = Gauge("ganpipe_inference_running", "inferences running", registry=registry)
        self.buffered = Gauge("ganpipe_request_body_bytes", "bytes of model request bodies being read or held",
                              registry=registry)  # fmt: skip

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()


class Instrument:
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


health = APIRouter()  # listed before /v1 in /openapi.json
metrics = APIRouter()  # listed last


@health.get("/healthz")
async def healthz(holder: Holder):
    # On the event loop, without a hop to the thread pool and back (under load, each hop waits for
    # Python's GIL), unless the champion changed: loading it takes seconds, so that goes to a thread.
    served = await run_in_threadpool(holder.current) if holder.changed() else holder.served
    if served is None:
        return {"status": "ok", "model": None, "version": None, "reload_error": holder.reload_error}
    return {"status": "ok", "model": str(served.path), "version": served.version, "task": served.model.info.task,
            "providers": served.model.providers, "reload_error": holder.reload_error}  # fmt: skip


@metrics.get("/metrics", response_class=PlainTextResponse)
def prometheus(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
