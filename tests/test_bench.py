"""The benchmark suite works: `python bench/run.py --quick` runs every benchmark on this
machine and writes a consistent results file, and its Markdown lands between the right markers.
No timing is asserted (speed goals live in docs/benchmarks.md, measured by the full suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import run as bench  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    docs_before = (REPO / "docs" / "benchmarks.md").read_bytes()
    res = subprocess.run([sys.executable, "bench/run.py", "--quick", "--device", "cpu", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == docs_before  # a quick run is no record
    return json.loads(out.read_text()), out


def test_quick_run_measures_every_benchmark_and_describes_the_machine(quick):
    report, _ = quick
    assert report["quick"] is True and set(report["results"]) == set(bench.BENCHMARKS)
    assert report["machine"]["kind"] == "cpu" and report["machine"]["cpu_cores"] >= 1
    assert all(s > 0 for s in report["seconds"].values())


def test_engine_and_textbook_are_measured_side_by_side_with_a_consistent_ratio(quick):
    (row,) = quick[0]["results"]["train"]["rows"]
    rates = row["images_per_s"]
    assert set(rates) == {"textbook", "engine"}
    for figure in rates.values():
        assert 0 < figure["min"] <= figure["median"] <= figure["max"] and figure["repeats"] == 2
    # the ratio is the median of the per-repeat paired ratios (with 2 repeats: their mean), not the
    # ratio of the medians, which can differ when the machine drifts between repeats
    ratio, (lo, hi) = row["ratio_to_textbook"]["engine"], row["ratio_to_textbook_range"]["engine"]
    assert lo <= ratio <= hi and ratio == pytest.approx((lo + hi) / 2, abs=0.01)
    engine, textbook = rates["engine"], rates["textbook"]
    assert engine["min"] / textbook["max"] - 0.01 <= lo and hi <= engine["max"] / textbook["min"] + 0.01


def test_scaling_points_have_throughput_memory_and_a_plot(quick):
    report, out = quick
    points = report["results"]["scaling"]["points"]
    assert [(p["size"], p["batch"]) for p in points] == [(32, 32), (32, 64)]
    assert all(p["images_per_s"]["median"] > 0 and p["peak_memory_mb"] > 100 for p in points)  # torch alone: >100
    png = out.with_name("bench_scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serving_evaluation_data_and_orchestration_report_real_measurements(quick):
    results = quick[0]["results"]
    dcgan = results["serving"]["models"]["dcgan"]
    for n in (1, 64):
        assert dcgan[f"batch_{n}"]["onnxruntime_cpu"]["median"] > 0 and dcgan[f"batch_{n}"]["torch_cpu"]["median"] > 0
    assert "CPUExecutionProvider" in dcgan["providers"]
    steps = results["evaluation"]["steps"]
    assert results["evaluation"]["images"] == 1000 and steps["total"]["seconds"]["median"] > 0
    assert all(steps[k]["seconds"]["median"] > 0 for k in ("classifier", "bootstrap", "memorisation"))
    inception = results["evaluation"]["inception"]  # the extra is installed by `make test`
    assert inception["images"] == 64 and inception["images_per_s"] > 0
    assert results["data"]["ingest"]["files"] == 1000 and results["data"]["ingest"]["counts"]
    assert "skipped" not in results["orchestration"]  # DVC and Prefect are installed here
    assert results["orchestration"]["noop"]["wall_s"]["median"] > 0


def test_docs_section_is_rewritten_between_its_markers_and_keeps_the_rest(quick, tmp_path):
    report, out = quick
    docs = tmp_path / "benchmarks.md"
    old = "<!-- bench:cpu:begin -->\nold numbers\n<!-- bench:cpu:end -->\n"
    docs.write_text(f"# Benchmarks\n\nhand-written intro\n\n{old}\n## after\nkept\n")
    bench.update_docs(report, out.with_name("bench_scaling.png"), docs)
    text = docs.read_text()
    assert "old numbers" not in text and "hand-written intro" in text and text.endswith("## after\nkept\n")
    block = text[text.index("<!-- bench:cpu:begin -->") : text.index("<!-- bench:cpu:end -->")]
    for title in ("the engine against a textbook loop", "scaling over batch size", "ONNX Runtime vs PyTorch",
                  "Evaluation throughput", "Data"):  # fmt: skip
        assert title in block
    assert "![scaling](images/bench_scaling_cpu.png)" in block and (tmp_path / "images/bench_scaling_cpu.png").is_file()
    # a GPU report gets its own section; the CPU one stays
    gpu = {**report, "machine": {**report["machine"], "kind": "cuda", "gpu": "Test GPU", "gpu_memory_gib": 1,
                                 "cuda": "0", "cudnn": 0}}  # fmt: skip
    bench.update_docs(gpu, None, docs)
    text = docs.read_text()
    assert "<!-- bench:cuda:begin -->\n## GPU: Test GPU" in text and "<!-- bench:cpu:begin -->\n## CPU" in text


def test_unknown_benchmark_is_refused_with_the_choices():
    res = subprocess.run([sys.executable, "bench/run.py", "nosuch"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "unknown benchmark(s) nosuch" in res.stderr and "train" in res.stderr
