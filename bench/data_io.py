"""Data: the training batch sampler, and `prepare` ingesting a large folder of images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import Context, fmt, rates
from PIL import Image

from pipeline.dataset import BatchSampler, load_split

ROOT = Path(__file__).resolve().parents[1]

_INGEST_CHILD = """
import json, re, resource, sys, time
from pathlib import Path
from pipeline.config import DataConfig
from pipeline.data.prepare import prepare
cfg = DataConfig(source="folder", path=sys.argv[1], image_size=64, channels=3)
t = time.perf_counter()
result = prepare(cfg, sys.argv[2] + "/prepared", sys.argv[2] + "/report.json")
print(json.dumps({"seconds": time.perf_counter() - t, "counts": result.counts,
                  # VmHWM, not ru_maxrss: the latter counts the forking parent's pages before exec
                  "main_peak_rss_mb": int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])
                  / 1024,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def loader(ctx: Context) -> dict:
    """Images per second delivered by the training batch sampler (32x32, batch 64) on ctx.device."""
    sampler = BatchSampler(load_split(ctx.prepared, "train"), 64, seed=0, device=ctx.device)
    return {"batch": 64, "images_per_s": rates(sampler.next, 64, 0.05 if ctx.quick else 0.5, ctx.repeats(), ctx.device)}


def ingest(ctx: Context) -> dict:
    """`prepare` on a folder of N distinct 64x64 RGB PNGs in 10 class folders (N: 100,000, quick 1,000,
    or GANPIPE_BENCH_INGEST_N), in a fresh process: wall time, files/s and peak memory."""
    n = int(os.environ.get("GANPIPE_BENCH_INGEST_N", "1000" if ctx.quick else "100000"))
    with tempfile.TemporaryDirectory(dir=ctx.tmp) as tmp:
        src = Path(tmp) / "images"
        base = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        for i in range(n):
            folder = src / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            img = base.copy()
            img[i % 64, (i // 64) % 64] = (i % 256, (i >> 8) % 256, (i >> 16) % 256)  # every image distinct
            Image.fromarray(img).save(folder / f"{i:06d}.png", compress_level=1)
        out = subprocess.run([sys.executable, "-c", _INGEST_CHILD, str(src), tmp], cwd=ROOT, check=True,
                             capture_output=True, text=True)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
    result["files_per_s"] = round(n / result["seconds"])
    return {"files": n, **{k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}}


def run(ctx: Context) -> dict:
    return {"loader": loader(ctx), "ingest": ingest(ctx)}


def markdown(result: dict) -> str:
    lo, ing = result["loader"], result["ingest"]
    return "\n".join([
        "### Data",
        "",
        "The training batch sampler (an index gather on the split held in one tensor on the training device), "
        f"batch {lo['batch']}; and `prepare` on {ing['files']:,} distinct 64×64 RGB PNGs in 10 class folders in "
        "a fresh process (peak memory read from the kernel: VmHWM of the main process, ru_maxrss of the "
        "largest decoding worker).",
        "",
        "| benchmark | result |",
        "|---|---|",
        f"| batch sampler | {fmt(lo['images_per_s'])} images/s |",
        f"| `prepare` ingest | {ing['seconds']} s, {ing['files_per_s']:,} files/s; peak memory "
        f"{ing['main_peak_rss_mb']} MB main process, {ing['worker_peak_rss_mb']} MB per worker |",
    ])  # fmt: skip
