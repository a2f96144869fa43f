"""Slow clients and heavy bodies against `ganpipe serve`: a real server in a child process on
127.0.0.1, as bench/load.py starts it. Not part of the test suite.

    python bench/serve_stalls.py slow      # 18 slow clients hold bodies open; normal clients call /v1 and /v2
    python bench/serve_stalls.py heavy     # /healthz probed while two clients send 1024² translations

`slow`: 18 sockets send `POST /v1/generate` (or /v2 infer) with Content-Length 1000, then `{`,
then a byte every 5 s, for the whole run, while 4 normal clients make --requests calls (half
/v1/generate, half /v2 infer) to a small generator. Prints their statuses and latency.

`heavy`: a small translator; two clients in turn send (a) /v2 infer with a 1024x1024 image as
JSON (about 6.8 MB of JSON numbers) asking for the result as JSON (about 20 MB), and (b)
/v1/translate with a 1024x1024 PNG; meanwhile /healthz is asked every 20 ms. Prints the probe's
latency (p50, p99, max) for each, and with no load. Record results in docs/reliability.md with the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import small_generator, small_translator, start_server  # noqa: E402


def ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else xs * 99
    return {"n": len(xs), "p50": round(q[49] * 1000, 1), "p99": round(q[98] * 1000, 1), "max": round(xs[-1] * 1000, 1)}


def slow(url: str, n_requests: int, every: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    socks, stop = [], threading.Event()
    for i in range(18):
        path = "/v1/generate" if i % 2 else "/v2/models/ganpipe/infer"
        s = socket.create_connection((host, int(port)))
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  "Content-Length: 1000\r\n\r\n{".encode())  # fmt: skip
        socks.append(s)
    closed = Counter()

    def trickle():
        while not stop.wait(every):
            for s in socks:
                try:
                    s.sendall(b" ")
                except OSError:
                    closed["slow sockets closed by the server"] += 1

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    time.sleep(1)
    z = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32).tolist()
    calls = [("v1", lambda c: c.post(f"{url}/v1/generate", json={"n": 16, "labels": ["3", "7"]})),
             ("v2", lambda c: c.post(f"{url}/v2/models/ganpipe/infer",
                                     json={"inputs": [{"name": "z", "shape": [2, 16], "datatype": "FP32", "data": z},
                                                      {"name": "labels", "shape": [2], "datatype": "INT64",
                                                       "data": [3, 7]}]}))]  # fmt: skip
    lock, results, it = threading.Lock(), [], iter(range(n_requests))

    def client():
        with httpx.Client(timeout=60) as c:
            while (i := next(it, None)) is not None:
                name, call = calls[i % 2]
                start = time.perf_counter()
                status = call(c).status_code
                with lock:
                    results.append((name, status, time.perf_counter() - start))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    sender.join()
    for s in socks:
        s.close()
    return {"slow_clients": 18, "byte_every_s": every, "normal_requests": len(results), "wall_s": round(wall, 1),
            "statuses": dict(Counter(f"{n} {s}" for n, s, _ in results)),
            "latency_ms": ms([e for *_, e in results]), **closed}  # fmt: skip


def heavy(url: str, seconds: float, decimals: int = 3) -> dict:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 1, 1024, 1024)).round(decimals)
    oip = json.dumps({"inputs": [{"name": "images", "shape": [1, 1, 1024, 1024], "datatype": "FP32",
                                  "data": image.ravel().tolist()}]}, separators=(",", ":")).encode()  # fmt: skip
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1024, 1024), dtype=np.uint8)).save(png, format="PNG")
    out = {"oip_json_body_mb": round(len(oip) / 1e6, 2)}
    loads = {"no load": None,
             "v2 infer, 1024² JSON in and out": lambda c: c.post(f"{url}/v2/models/ganpipe/infer", content=oip,
                                                                  headers={"content-type": "application/json"}),
             "v1 translate, 1024² PNG": lambda c: c.post(f"{url}/v1/translate", content=png.getvalue(),
                                                        headers={"content-type": "image/png"})}  # fmt: skip
    for name, call in loads.items():
        stop, statuses, probes = threading.Event(), Counter(), []

        def client(call=call, stop=stop, statuses=statuses):
            with httpx.Client(timeout=120) as c:
                while not stop.is_set():
                    statuses[call(c).status_code] += 1

        threads = [threading.Thread(target=client) for _ in range(2 if call else 0)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + seconds
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                c.get(f"{url}/healthz").raise_for_status()
                probes.append(time.perf_counter() - start)
                time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join()
        out[name] = {"healthz_ms": ms(probes), "heavy_statuses": dict(statuses)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", choices=["slow", "heavy"])
    parser.add_argument("--requests", type=int, default=1000, help="slow: normal requests")
    parser.add_argument("--every", type=float, default=5.0, help="slow: seconds between a slow client's bytes")
    parser.add_argument("--seconds", type=float, default=20.0, help="heavy: seconds of each load")
    parser.add_argument("--decimals", type=int, default=3,
                        help="heavy: decimals of each JSON number (3: 6.7 MB of JSON; 4: 7.75 MB, under the default "
                             "8 MiB upload limit; 5: 8.8 MB, refused with 413)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = small_generator(Path(tmp)) if args.run == "slow" else small_translator(Path(tmp))
        proc, url, log = start_server(model, {})
        try:
            if args.run == "slow":
                out = slow(url, args.requests, args.every)
            else:
                out = heavy(url, args.seconds, args.decimals)
            out["server_tracebacks"] = sum("Traceback" in line for line in log)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps({"run": args.run, **out, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
