"""A bounded load run against `ganpipe serve`: a real server in a child process on 127.0.0.1,
driven by client threads over keep-alive connections. Not part of the test suite.

    python bench/load.py                       # 4000 POST /v1/generate at concurrency 16
    python bench/load.py --mixed               # a third of them bad requests of every kind
    python bench/load.py --requests 500 --model exports/generator.onnx --max-concurrency 4

Without --model it serves a small conditional DCGAN (16x16, 10 classes, untrained weights: speed
does not depend on them) exported with the pipeline's own exporter. Prints one JSON object:
requests, concurrency, p50/p99 latency, the count of each status (and of 5xx), and the server's
resident memory before and after the run. Record results in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVE = (
    "import json, sys; from pathlib import Path; from pipeline.serve.app import ServeConfig, serve; "
    "serve(ServeConfig(model=Path(sys.argv[1]), **json.loads(sys.argv[2])), port=0)"
)
GOOD = {"n": 16, "labels": ["3", "7"]}  # a 16-image PNG grid, the page's default request


def small_generator(root: Path) -> Path:
    import torch

    from pipeline.config import ModelConfig
    from pipeline.export import export_generator
    from pipeline.models import build_generator

    cfg = ModelConfig(arch="dcgan", latent_dim=16, g_channels=16, conditional=True)
    torch.manual_seed(0)
    g = build_generator(cfg, 16, 1, 10).eval()
    spec = {"model": cfg.model_dump(mode="json"), "image_size": 16, "channels": 1, "num_classes": 10,
            "class_names": [str(i) for i in range(10)]}  # fmt: skip
    torch.save({"spec": spec, "state_dict": g.state_dict(), "steps": 0}, root / "generator.pt")
    export_generator(root / "generator.pt", root / "generator.onnx")
    return root / "generator.onnx"


def small_translator(root: Path) -> Path:
    """A trained-shape CycleGAN translator (16 px, 1 channel) exported by the pipeline's own export code."""
    import torch

    from pipeline.config import ModelConfig
    from pipeline.export import export_translators
    from pipeline.models import build_generator, directions

    cfg = ModelConfig(arch="cyclegan", g_channels=4, n_blocks=1)
    torch.manual_seed(0)
    state = {d: build_generator(cfg, 16, 1).state_dict() for d in directions("cyclegan")}
    spec = {"task": "translate", "model": cfg.model_dump(mode="json"), "image_size": 16, "channels": 1,
            "directions": ["AB", "BA"], "size_multiple": 4, "min_size": 8, "num_classes": 0,
            "class_names": []}  # fmt: skip
    torch.save({"spec": spec, "state_dicts": state, "steps": 0}, root / "t.pt")
    export_translators(root / "t.pt", root / "exports")
    return root / "exports" / "generator_AB.onnx"


def start_server(model: Path, limits: dict) -> tuple[subprocess.Popen, str, list[str]]:
    """The server, its URL, and its log lines after startup (filled in as they come)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(model), json.dumps(limits)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    log: list[str] = []
    for line in proc.stderr:
        if found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
            threading.Thread(target=log.extend, args=(proc.stderr,), daemon=True).start()
            return proc, found.group(1), log
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def disconnect_mid_body(url: str) -> int:
    """A client that declares 1000 bytes, sends 10 and goes away; nothing comes back to it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b'Content-Length: 1000\r\n\r\n{"n": 2, "s')  # fmt: skip
    return 0  # no status: the server counts it as 499 in /metrics


def bad_requests(url: str) -> list:
    """One of each kind of bad request a client may send, as (name, function of an httpx.Client)."""
    gen, js = f"{url}/v1/generate", {"content-type": "application/json"}
    translate, png = f"{url}/v1/translate", {"content-type": "image/png"}
    return [
        ("malformed JSON", lambda c: c.post(gen, content=b"{not json", headers=js)),
        ("5000-digit integer", lambda c: c.post(gen, content=b'{"n": ' + b"1" * 5000 + b"}", headers=js)),
        ("200k nested brackets", lambda c: c.post(gen, content=b"[" * 200_000, headers=js)),
        ("n over max_n", lambda c: c.post(gen, json={"n": 10_000})),
        ("unknown field", lambda c: c.post(gen, json={"n": 2, "colour": "red"})),
        ("label '²'", lambda c: c.post(gen, json={"n": 2, "labels": ["²"]})),
        ("wrong content type", lambda c: c.post(gen, content=b'{"n": 2}', headers={"content-type": "text/plain"})),
        ("translate on a generator", lambda c: c.post(translate, content=b"\x89PNG", headers=png)),
        ("wrong method", lambda c: c.get(gen)),
        ("body over 1 MB", lambda c: c.post(gen, content=b" " * (1 << 20) + b"{}", headers=js)),
        ("disconnect mid-body", lambda c: disconnect_mid_body(url)),
    ]


def run(url: str, n_requests: int, concurrency: int, mixed: bool) -> dict:
    good = ("generate", lambda c: c.post(f"{url}/v1/generate", json=GOOD))
    bad = bad_requests(url)
    # Mixed: every third request is a bad one, the kinds in turn.
    plan = [bad[(i // 3) % len(bad)] if mixed and i % 3 == 2 else good for i in range(n_requests)]
    lock, results = threading.Lock(), []
    it = iter(range(n_requests))

    def client():
        with httpx.Client(timeout=60) as c:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                name, send = plan[i]
                start = time.perf_counter()
                try:
                    res = send(c)
                    status = res if isinstance(res, int) else res.status_code
                except httpx.TransportError as err:  # the server reset or dropped the connection
                    status = type(err).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    results.append((name, status, elapsed))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    def ms(q: float, xs: list[float]) -> float:
        return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1000, 1) if len(xs) > 1 else 0.0

    latencies = [e for _, s, e in results if isinstance(s, int) and s]
    by_kind: dict[str, Counter] = {}
    for name, status, _ in results:
        by_kind.setdefault(name, Counter())[str(status or "disconnected")] += 1
    statuses = Counter(str(s) for _, s, _ in results if s)  # 0: the deliberate disconnects, answered by nobody
    good_latencies = [e for name, s, e in results if name == "generate" and isinstance(s, int)]
    return {
        "requests": len(results),
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 1),
        "latency_ms": {"p50": ms(50, latencies), "p99": ms(99, latencies), "max": round(max(latencies) * 1000, 1)},
        "good_latency_ms": {"p50": ms(50, good_latencies), "p99": ms(99, good_latencies)},
        "statuses": dict(sorted(statuses.items())),
        "5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "connection_errors": sum(v for k, v in statuses.items() if not k.isdigit()),
        "by_kind": {k: dict(v) for k, v in by_kind.items()} if mixed else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mixed", action="store_true", help="a third of the requests bad, of every kind")
    parser.add_argument("--model", type=Path, help="an exported generator (default: a small one made here)")
    parser.add_argument("--max-concurrency", type=int, help="ServeConfig.max_concurrency (default: the service's)")
    parser.add_argument("--max-queue", type=int, help="ServeConfig.max_queue (default: the service's)")
    args = parser.parse_args()
    limits = {k: v for k, v in (("max_concurrency", args.max_concurrency), ("max_queue", args.max_queue)) if v}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or small_generator(Path(tmp))
        proc, url, log = start_server(model, limits)
        try:
            server = psutil.Process(proc.pid)
            for _ in range(20):  # warm up: the first requests build ONNX Runtime's kernels
                httpx.post(f"{url}/v1/generate", json=GOOD).raise_for_status()
            rss_before = server.memory_info().rss
            out = run(url, args.requests, args.concurrency, args.mixed)
            rss_after = server.memory_info().rss
            health = httpx.get(f"{url}/healthz").status_code
            metrics = httpx.get(f"{url}/metrics").text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    served = re.findall(r'ganpipe_requests_total\{endpoint="([^"]+)",status="(\d+)"\} ([\d.]+)', metrics)
    print(json.dumps({
        "model": "small conditional DCGAN 16x16 (made here)" if args.model is None else str(args.model),
        "mixed": args.mixed,
        **out,
        "server_rss_mb": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1)},
        "server_counted": {f"{e} {s}": int(float(v)) for e, s, v in served if e != "/metrics"},
        "server_tracebacks": sum("Traceback" in line for line in log),
        "healthz_after": health,
        "limits": limits or "service defaults",
        "cpus": os.cpu_count(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
