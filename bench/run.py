"""The benchmark suite: speed numbers live here, never in timed tests.

    python bench/run.py                 # everything: reports/bench.json, and docs/benchmarks.md updated
    python bench/run.py --quick         # a fast pass proving the suite works (CI); docs left alone
    python bench/run.py train scaling   # some benchmarks only (docs left alone unless --docs)
    python bench/run.py --render reports/bench.json   # rewrite docs/benchmarks.md's section from a result file
    ganpipe bench [same arguments]

Every figure is the median of repeats with min and max; comparisons (engine vs textbook loop,
ONNX Runtime vs PyTorch) are measured side by side in one run. The results file describes the
machine; docs/benchmarks.md keeps one section per kind of machine (CPU, CUDA), each rewritten
from its latest full run. Runs without DVC, DVCLive or Prefect: what needs them is reported as
skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import common  # noqa: E402
import data_io  # noqa: E402
import evaluation  # noqa: E402
import orchestration  # noqa: E402
import serving  # noqa: E402
import training  # noqa: E402

from pipeline.config import Params  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.runtime import resolve_device, set_threads  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"

# name -> (run(ctx) -> dict, markdown(result) -> str)
BENCHMARKS = {
    "train": (training.run_compare, training.markdown_compare),
    "scaling": (training.run_scaling, training.markdown_scaling),
    "serving": (serving.run, serving.markdown),
    "evaluation": (evaluation.run, evaluation.markdown),
    "orchestration": (orchestration.run, orchestration.markdown),
    "data": (data_io.run, data_io.markdown),
}


def machine() -> dict:
    cpu = "unknown"
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found[1].strip() if found else platform.processor() or "unknown"
    except OSError:
        pass
    out = {
        "kind": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": cpu,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30), "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version()})  # fmt: skip
    return out


def describe(m: dict) -> str:
    cpu = f"{m['cpu_cores']} CPU cores ({m['cpu']}), {m['torch_threads']} torch threads"
    gpu = f"{m['gpu']} ({m['gpu_memory_gib']} GiB), CUDA {m['cuda']}, cuDNN {m['cudnn']}; " if "gpu" in m else ""
    return f"{gpu}{cpu}; Python {m['python']}, torch {m['torch']}, ONNX Runtime {m.get('onnxruntime', '–')}"


def run(names: list[str], quick: bool, device: str) -> dict:
    set_threads()
    dev = resolve_device(device)
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        prepared = ROOT / "data" / "prepared"
        if not (prepared / "manifest.json").is_file():
            prepare(Params().data, t / "prepared", t / "report.json")
            prepared = t / "prepared"
        ctx = common.Context(quick=quick, device=dev, prepared=prepared, tmp=t)
        for name in names:
            start = time.perf_counter()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            results[name] = BENCHMARKS[name][0](ctx)
            seconds[name] = round(time.perf_counter() - start, 1)
            print(f"bench: {name} done in {seconds[name]} s", file=sys.stderr, flush=True)
    return {"machine": machine(), "device": str(dev), "quick": quick,
            "date": datetime.date.today().isoformat(), "seconds": seconds, "results": results}  # fmt: skip


def section(report: dict, image: str | None) -> str:
    """The Markdown section of docs/benchmarks.md for the report's kind of machine."""
    m = report["machine"]
    title = f"GPU: {m['gpu']}" if m["kind"] == "cuda" else f"CPU: {m['cpu_cores']} cores, no GPU"
    parts = [f"## {title}", "", f"Measured {report['date']} by `python bench/run.py` on {describe(m)}. "
             f"Whole suite: {sum(report['seconds'].values()):.0f} s."]  # fmt: skip
    if report.get("note"):  # what a results file says about how it was put together (added by hand)
        parts += ["", f"*Note: {report['note']}.*"]
    for name, result in report["results"].items():
        md = BENCHMARKS[name][1]
        parts += ["", md(result, image) if name == "scaling" else md(result)]
    return "\n".join(parts)


def update_docs(report: dict, scaling_png: Path | None, docs: Path = DOCS) -> None:
    """Rewrite the section of `docs` (between its bench:<kind> markers; appended when absent)
    for the report's kind of machine; its scaling plot goes to docs' images/ folder."""
    kind = report["machine"]["kind"]
    image = None
    if scaling_png is not None and scaling_png.is_file():
        (docs.parent / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scaling_png, docs.parent / "images" / f"bench_scaling_{kind}.png")
        image = f"images/bench_scaling_{kind}.png"
    elif (docs.parent / "images" / f"bench_scaling_{kind}.png").is_file():  # re-rendered without its plot
        image = f"images/bench_scaling_{kind}.png"
    begin, end = f"<!-- bench:{kind}:begin -->", f"<!-- bench:{kind}:end -->"
    block = f"{begin}\n{section(report, image)}\n{end}"
    text = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = docs.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(docs)


def scaling_png(report: dict, out: Path) -> Path | None:
    scaling = report["results"].get("scaling")
    if not scaling or not scaling.get("points"):
        return None
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu_cores']} CPU cores"
    return training.scaling_figure(scaling, f"Engine scaling, default DCGAN recipe ({where})", out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ganpipe's benchmark suite (see docs/benchmarks.md)")
    ap.add_argument("names", nargs="*", metavar="benchmark", help=f"some of {', '.join(BENCHMARKS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes: proves the suite works")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json", help="the results file")
    ap.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite this machine's section of docs/benchmarks.md (default: on a full, non-quick run)",
    )
    ap.add_argument("--render", type=Path, metavar="RESULTS",
                    help="only rewrite docs/benchmarks.md from an existing results file")  # fmt: skip
    a = ap.parse_args(argv)
    if a.render:
        report = json.loads(a.render.read_text())
        with tempfile.TemporaryDirectory() as tmp:  # the plot is drawn again from the file's numbers
            update_docs(report, scaling_png(report, Path(tmp) / "scaling.png"))
        print(f"updated {DOCS.relative_to(ROOT)} from {a.render}")
        return 0
    unknown = [n for n in a.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = a.names or list(BENCHMARKS)
    report = run(names, a.quick, a.device)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = a.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(a.out)
    png = scaling_png(report, a.out.with_name(a.out.stem + "_scaling.png"))
    print(json.dumps(report, indent=2))
    if a.docs or (a.docs is None and not a.quick and not a.names):
        update_docs(report, png)
        print(f"updated {DOCS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
