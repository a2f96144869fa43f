"""Admission control: reading bodies within their limits, admission to the model endpoints and
the inference slots (see app.py's docstring for the policy)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import Request
from prometheus_client import Gauge
from starlette.concurrency import run_in_threadpool

from pipeline.serve.common import RETRY_AFTER_S, ApiError, read_body
from pipeline.serve.config import ServeConfig


class Limiter:
    """Reading bodies, admission to the model endpoints and the inference slots, for one app."""

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
