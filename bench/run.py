"""The benchmark suite: speed numbers live here, not in timed tests.

    python bench/run.py            # all benchmarks, results as JSON on stdout
    python bench/run.py loader     # one of: loader, train_step, onnx, ingest

Each benchmark runs on the default data (prepared on the fly into a temporary folder if
data/prepared/ is absent) and reports a median over repeats. Record results in
docs/benchmarks.md together with the machine they were measured on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import Params, parse_params  # noqa: E402
from pipeline.data.dataset import BatchSampler, load_split  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402


def prepared_dir(tmp: Path) -> Path:
    default = ROOT / "data" / "prepared"
    if (default / "manifest.json").is_file():
        return default
    prepare(Params().data, tmp / "prepared", tmp / "report.json")
    return tmp / "prepared"


def median_rate(fn, items_per_call: int, repeats: int = 5, calls: int = 50) -> float:
    fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(items_per_call * calls / (time.perf_counter() - t))
    return statistics.median(rates)


def bench_loader(prepared: Path) -> dict:
    """Images per second delivered by the training batch sampler (32x32, batch 64, CPU)."""
    sampler = BatchSampler(load_split(prepared, "train"), 64, seed=0, device=torch.device("cpu"))
    return {"images_per_s": round(median_rate(sampler.next, 64, calls=500))}


def bench_train_step(prepared: Path) -> dict:
    """Optimiser steps per second of the default DCGAN (batch 64) on this machine's CPU."""
    from pipeline.training.runner import TrainPaths, train

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        steps = 60
        params = parse_params({"train": {"steps": steps, "sample_every": 10_000, "checkpoint_every": 10_000}})
        paths = TrainPaths(prepared=prepared, checkpoints=t / "c", generator=t / "g.pt", live_dir=t / "l",
                           samples=t / "s.png")  # fmt: skip
        start = time.perf_counter()
        train(params, paths, progress=False)
        seconds = time.perf_counter() - start
    return {"steps_per_s": round(steps / seconds, 2), "images_per_s": round(64 * steps / seconds)}


def bench_onnx(prepared: Path) -> dict:
    """Exported default generator: ONNX Runtime vs PyTorch latency at batch 1 and 64."""
    from pipeline.config import ModelConfig
    from pipeline.export import export_generator
    from pipeline.inference import OnnxGenerator
    from pipeline.models import build_generator

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cfg = ModelConfig()
        g = build_generator(cfg, 32, 1).eval()
        spec = {"model": cfg.model_dump(mode="json"), "image_size": 32, "channels": 1, "num_classes": 0,
                "class_names": []}  # fmt: skip
        torch.save({"spec": spec, "state_dict": g.state_dict(), "steps": 0}, t / "g.pt")
        export_generator(t / "g.pt", t / "g.onnx")
        onnx_gen = OnnxGenerator(t / "g.onnx")
        out = {}
        for n in (1, 64):
            z = torch.randn(n, cfg.latent_dim)
            with torch.no_grad():
                torch_rate = median_rate(lambda z=z: g(z), n, calls=20)
            onnx_rate = median_rate(lambda n=n: onnx_gen.generate(n), n, calls=20)
            out[f"batch_{n}"] = {"torch_images_per_s": round(torch_rate), "onnxruntime_images_per_s": round(onnx_rate)}
        return out


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


def bench_ingest(_prepared: Path) -> dict:
    """`prepare` on a folder of N distinct 64x64 RGB PNGs in 10 class folders (N from
    GANPIPE_BENCH_INGEST_N, default 100,000): wall time, files/s and peak memory of the
    main process and of the largest decoding worker."""
    import subprocess

    import numpy as np
    from PIL import Image

    n = int(os.environ.get("GANPIPE_BENCH_INGEST_N", "100000"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "images"
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        for i in range(n):
            folder = src / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            img = base.copy()
            img[i % 64, (i // 64) % 64] = (i % 256, (i >> 8) % 256, (i >> 16) % 256)  # every image distinct
            Image.fromarray(img).save(folder / f"{i:06d}.png", compress_level=1)
        out = subprocess.run(
            [sys.executable, "-c", _INGEST_CHILD, str(src), tmp], cwd=ROOT, check=True, capture_output=True, text=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    result["files_per_s"] = round(n / result["seconds"])
    return {"files": n, **{k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}}


BENCHMARKS = {"loader": bench_loader, "train_step": bench_train_step, "onnx": bench_onnx, "ingest": bench_ingest}


def main(names: list[str]) -> None:
    chosen = names or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepared_dir(Path(tmp))
        results = {
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
            **{name: BENCHMARKS[name](prepared) for name in chosen},
        }  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
