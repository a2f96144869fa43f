"""A local Prefect API for one pipeline run: reuse a healthy one, else start and stop our own.

Without a server every stage process would start Prefect's temporary one (7-13 s each,
measured on 2 cores); with one local server a stage's flow run costs about 1.5 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prefect.settings import PREFECT_API_URL, temporary_settings

from pipeline.errors import UserError

# Keep Prefect from phoning home, whatever profile the user has.
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
}


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(api_url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile, if any."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain_prefect_clients(timeout: float = 15.0) -> None:
    """Send this process's queued Prefect logs and events while the server still listens.

    Otherwise Prefect drains them at interpreter exit, after our server is gone, and the
    process waits forever on a connection that will never come back.
    """
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # public: sends the queued logs (waits up to 5 s)
    drain_events(timeout)


def drain_events(timeout: float) -> None:
    """Send the queued events. Prefect 3.8 has no public call for it; this is what its own
    prefect_test_harness does. tests/test_server.py fails if it stops working."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)


_STARTED: set[str] = set()  # the APIs local_prefect_api started, while they run


def describe(url: str) -> str:
    """The line a command prints about the Prefect API it reports to."""
    if url not in _STARTED:
        return f"Prefect API: {url}"
    return (f"Prefect API: {url}, a temporary server that stops when this command ends (its links stop working "
            "with it); for a lasting UI run `prefect server start` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api")  # fmt: skip


def configured_server() -> str | None:
    """The Prefect API configured (PREFECT_API_URL or the active profile) if it answers, None when
    none is configured; UserError naming it when one is configured but does not answer, rather
    than running elsewhere: the runs would be missing from the server the team looks at."""
    url = configured_api_url()
    if url and not healthy(url):
        raise UserError(f"Prefect API {url} (PREFECT_API_URL or the active Prefect profile) does not answer: start "
                        "that server, or unset it (`prefect config unset PREFECT_API_URL`) to use a temporary local "
                        "one")  # fmt: skip
    return url


@contextlib.contextmanager
def local_prefect_api(startup_timeout: float = 90.0) -> Iterator[str]:
    """Yield the URL of the configured Prefect API, or else of a temporary one started on this
    machine (127.0.0.1 only, stopped on exit), setting PREFECT_API_URL for child processes. A
    configured API that does not answer is UserError (configured_server)."""
    os.environ.update(QUIET)
    url = configured_server()
    if url:
        os.environ["PREFECT_API_URL"] = url
        yield url
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tempfile.NamedTemporaryFile(prefix="ganpipe-prefect-server-", suffix=".log", delete=False)  # noqa: SIM115 (outlives this block)
    prefect_bin = Path(sys.executable).with_name("prefect")
    cmd = [
        str(prefect_bin) if prefect_bin.exists() else "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, **QUIET, "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while not healthy(url, timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"local Prefect server did not start (log {log.name}):\n{tail}")
            time.sleep(0.25)
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # for the stage processes
        _STARTED.add(url)
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):  # for flows in this process
                yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
    finally:
        _STARTED.discard(url)
        drain_prefect_clients()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)
