"""How `ganpipe serve` runs under uvicorn: its HTTP protocol (a deadline on each request's head),
uvicorn's config for an app, and the allocator setting that lets memory go back after a burst."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import sys
from typing import Any

from fastapi import FastAPI

log = logging.getLogger("ganpipe.serve")


def release_freed_memory() -> None:
    """Have glibc hand freed blocks of 1 MiB and more straight back to the system. By default its
    threshold for that rises to the largest block freed so far (up to 32 MiB); blocks below it come
    from malloc's arenas, which give memory back only from their top, so a burst of large
    translations left the process near its peak for good (+350 MB after eight with a small
    translator, without ONNX Runtime's arena). Process-wide, hence in serve() and not in create_app.
    Not glibc (musl, macOS): nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 1 << 20)


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
