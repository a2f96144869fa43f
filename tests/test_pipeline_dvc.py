"""The whole pipeline through real DVC and real Prefect, in a temporary git repository."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import REPO, TINY, make_repo, merge, sh, write_params
from PIL import Image

from flows.stage import tool_env

pytestmark = pytest.mark.integration

STAGES = ["prepare", "evaluator", "reference", "train", "evaluate", "export"]


def flow_run_names(api_url: str) -> list[str]:
    """Names of the flows of every flow run the Prefect server has recorded, oldest first."""
    from prefect.client.orchestration import get_client

    async def fetch():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=200)
            flows = {f.id: f.name for f in await client.read_flows(limit=200)}
            return [flows[r.flow_id] for r in sorted(runs, key=lambda r: r.created)]

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api) -> Path:
    """The project with tiny params, as a fresh repository."""
    return make_repo(tmp_path_factory.mktemp("repo"), TINY)


@pytest.fixture(scope="module")
def first_run(repo, prefect_api):
    before = flow_run_names(prefect_api)
    res = sh([sys.executable, "-m", "dvc", "repro"], repo)
    return res, flow_run_names(prefect_api)[len(before) :]


def test_repro_runs_every_stage_as_a_prefect_flow(first_run):
    res, runs = first_run
    for stage in STAGES:
        assert f"Running stage '{stage}'" in res.stdout
    assert runs == STAGES  # one flow run per stage, in pipeline order, on the shared server


def test_evaluate_flow_publishes_the_metrics_table_as_a_prefect_artifact(repo, first_run, prefect_api):
    import httpx

    found = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["ganpipe-eval"]}}})
    fid = json.loads((repo / "metrics/eval.json").read_text())["fid"]  # the server holds other tests' runs too
    ours = [a["data"] for a in found.json() if f"| **{fid:.3f}** |" in a["data"]]
    assert ours and "untrained generator (ceiling)" in ours[-1] and "real held-out images (floor)" in ours[-1]


def test_repro_writes_every_artifact_of_the_contract(repo, first_run):
    for rel in ["data/prepared/train_images.npy", "data/prepared/manifest.json", "data/prepared/stats.json",
                "reports/data_report.json", "reports/data_report.md", "reports/data_report_thumbs.png",
                "models/evaluator.pt", "metrics/evaluator.json", "models/generator.pt", "reports/samples.png",
                "dvclive/metrics.json", "reports/eval_comparison.png", "reports/figures/samples.png",
                "reports/figures/memorisation.png", "reports/figures/curves.png", "reports/report.md",
                "reports/report.html", "metrics/eval.json", "metrics/eval_details.json", "exports/generator.onnx",
                "exports/model_card.json",
                "metrics/export.json", "reports/export_details.json", "dvc.lock"]:  # fmt: skip
        assert (repo / rel).is_file(), rel
    # resume points: one folder per parameter set, git-ignored and outside DVC's outputs
    assert len(list((repo / "models/checkpoints").glob("*/ckpt_*.pt"))) == 2
    assert "models/checkpoints" not in (repo / "dvc.lock").read_text()
    assert Image.open(repo / "reports/samples.png").format == "PNG"
    ev = json.loads((repo / "metrics/eval_details.json").read_text())
    assert ev["fid_real_floor"] < ev["fid_untrained_ceiling"]
    assert ev["num_samples"] == len(np.load(repo / "data/prepared/val_labels.npy"))
    assert 0 <= json.loads((repo / "metrics/evaluator.json").read_text())["val_accuracy"] <= 1


def test_dvc_metrics_are_what_experiments_are_compared_by_and_the_report_links_the_stage_pictures(repo, first_run):
    shown = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo).stdout)
    files = {f: v["data"] for rev in shown.values() for f, v in rev["data"].items()}
    # one metrics file, quality only: the evaluator's accuracy, the export's parity gate and every
    # descriptive number (anchors, counts, hashes) are files DVC caches, not metrics
    assert set(files) == {"metrics/eval.json"}
    assert list(files["metrics/eval.json"]) == ["fid", "fid_vs_floor", "precision", "recall", "coverage",
                                                "class_accuracy"]  # its classes come from the noise
    details = json.loads((repo / "metrics/eval_details.json").read_text())
    assert {"fid_real_floor", "kid", "extractor_sha256", "num_samples"} <= set(details)
    assert not set(details) & set(files["metrics/eval.json"])  # each number in one file
    assert json.loads((repo / "metrics/evaluator.json").read_text())["val_accuracy"] > 0
    assert "latency" not in json.dumps(json.loads((repo / "metrics/export.json").read_text()))
    timing = json.loads((repo / "reports/export_details.json").read_text())
    assert set(timing["latency_ms_batch16"]) == {"onnxruntime", "torch"} and "batch_16" in timing[
        "max_abs_diff_per_batch"]
    plots = sh([sys.executable, "-m", "dvc", "plots", "show", "--json"], repo).stdout
    for picture in ("reports/eval_comparison.png", "reports/figures/memorisation.png", "reports/figures/samples.png"):
        assert picture in plots  # `dvc plots diff` puts two experiments' pictures side by side
    md = (repo / "reports/report.md").read_text()
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert f"FID {ev['fid']:.3f} is {ev['fid_vs_floor']}x the real-data floor ({details['fid_real_floor']:.3f})" in md
    for link in ("figures/samples.png", "eval_comparison.png", "figures/memorisation.png", "figures/curves.png"):
        assert f"]({link})" in md


def test_dvc_exp_show_leads_with_the_metrics_in_at_most_120_columns_and_rounds_none_to_zero(repo, first_run):
    header = sh([sys.executable, "-m", "dvc", "exp", "show", "--csv"], repo).stdout.splitlines()[0].split(",")
    table = [c for c in header if c not in ("rev", "typ", "parent")]  # columns only --csv adds
    assert len(table) <= 120, len(table)
    assert table[:7] == ["Experiment", "Created", "fid", "fid_vs_floor", "precision", "recall", "coverage"]
    shown = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo).stdout)
    values = [v for rev in shown.values() for f in rev["data"].values() for v in f["data"].values()]
    # dvc rounds to 5 decimals: a number that matters must not show as 0.0 (or one file would hide it)
    assert values and all(round(v, 5) != 0 for v in values if isinstance(v, float) and v != 0)


def test_exported_model_matches_pytorch_and_carries_metadata(repo, first_run):
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["parity_passed"] is True and export["max_abs_diff"] <= 1e-4
    meta = {p.key: p.value for p in onnx.load(repo / "exports/generator.onnx").metadata_props}
    head = sh(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert meta["ganpipe.git_rev"] == head and meta["ganpipe.image_size"] == "16"
    res = sh([sys.executable, "-m", "flows.cli", "generate", "-n", "4", "--out", "g.png"], repo)
    assert "wrote 4 samples" in res.stdout and (repo / "g.png").is_file()


def test_second_repro_with_nothing_changed_runs_no_stage(repo, first_run, prefect_api):
    before = flow_run_names(prefect_api)
    generator_mtime = (repo / "models/generator.pt").stat().st_mtime_ns
    res = sh([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage" not in res.stdout
    assert "Data and pipelines are up to date" in res.stdout
    assert flow_run_names(prefect_api) == before
    assert (repo / "models/generator.pt").stat().st_mtime_ns == generator_mtime


def test_dvc_yaml_keeps_every_stage_in_the_run_cache():
    """A stage with a persistent output, or an uncached `outs` entry, gets no DVC run-cache
    (uncached metrics and plots keep it)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == STAGES
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                assert not opts.get("persist"), f"{name}: {path} persists"
                assert kind != "outs" or opts.get("cache", True), f"{name}: {path} is an uncached output"


# One parameter of each stage, changed from TINY's values; data.val_fraction changes the split,
# so every stage below prepare runs again too.
CHANGED = {"data.val_fraction": 0.25, "evaluate.evaluator.steps": 30, "evaluate.batch_size": 100,
           "train.lr_g": 3e-4, "evaluate.kid_subsets": 5, "export.parity_tolerance": 2e-4}  # fmt: skip


def set_keys(params: dict, values: dict) -> dict:
    out = yaml.safe_load(yaml.safe_dump(params))
    for dotted, value in values.items():
        *groups, key = dotted.split(".")
        node = out
        for g in groups:
            node = node[g]
        node[key] = value
    return out


def outputs(root: Path) -> dict[str, bytes]:
    """Every file of every stage output dvc.lock records (cached or in git), by path."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    found = {}
    for stage in lock["stages"].values():
        for out in stage["outs"]:
            top = root / out["path"]
            for f in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
                found[f.relative_to(root).as_posix()] = f.read_bytes()
    return found


def test_a_parameter_set_already_run_is_restored_by_every_stage_without_running_it(repo, first_run, prefect_api):
    """DVC's run-cache on every stage: change one parameter of each stage, run, change them back:
    the second `dvc repro` runs no stage command (no flow run reaches Prefect) and restores every
    output byte for byte; `dvc exp run` of the changed set restores it the same way."""
    original_params = (repo / "params.yaml").read_text()
    before = outputs(repo)
    changed = set_keys(yaml.safe_load(original_params), CHANGED)
    assert changed["evaluate"]["batch_size"] != yaml.safe_load(original_params)["evaluate"]["batch_size"]
    write_params(repo / "params.yaml", changed)
    try:
        res = sh([sys.executable, "-m", "dvc", "repro"], repo)
        for stage in STAGES:
            assert f"Running stage '{stage}'" in res.stdout, stage
        after_change = outputs(repo)
        assert after_change["models/generator.pt"] != before["models/generator.pt"]
    finally:
        (repo / "params.yaml").write_text(original_params)
    runs = flow_run_names(prefect_api)
    res = sh([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage" not in res.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in res.stdout, stage
    assert flow_run_names(prefect_api) == runs  # no stage command ran
    assert outputs(repo) == before
    # an experiment with the changed set: restored from the run-cache, nothing trained
    sets = [x for k, v in CHANGED.items() for x in ("-S", f"{k}={v}")]
    res = sh([sys.executable, "-m", "dvc", "exp", "run", *sets], repo)
    assert "Running stage" not in res.stdout and "is cached - skipping run" in res.stdout
    assert flow_run_names(prefect_api) == runs
    assert outputs(repo) == after_change
    (repo / "params.yaml").write_text(original_params)
    sh([sys.executable, "-m", "dvc", "repro"], repo)  # restored again: the workspace as the tests after expect
    assert outputs(repo) == before


def test_changing_train_steps_reruns_train_evaluate_export_only(repo, first_run, prefect_api):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["steps"] = TINY["train"]["steps"] + 6
    write_params(repo / "params.yaml", params)
    prepared_mtime = (repo / "data/prepared/train_images.npy").stat().st_mtime_ns
    before = flow_run_names(prefect_api)
    # through the main command this time: it must reuse the running Prefect API, not start one
    res = sh([sys.executable, "-m", "flows.cli", "repro"], repo)
    out = res.stdout + res.stderr
    assert f"Prefect API: {prefect_api}" in out
    for stage in ("train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in out
    for stage in ("prepare", "evaluator", "reference"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "resumed from 12" in out  # the checkpoint (outside DVC's outputs) is continued, not retrained
    assert flow_run_names(prefect_api)[len(before) :] == ["ganpipe-pipeline", "train", "evaluate", "export"]
    assert (repo / "data/prepared/train_images.npy").stat().st_mtime_ns == prepared_mtime
    # the pipeline's sample artifact is the picture itself, readable on any machine that opens the UI
    import base64

    import httpx

    found = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["ganpipe-samples"]}},
                                                                "sort": "CREATED_DESC", "limit": 1}).json()  # fmt: skip
    assert found[0]["type"] == "image"
    prefix, encoded = found[0]["data"].split(",", 1)
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(encoded) == (repo / "reports/samples.png").read_bytes()
    steps = [
        int(r.split("\t")[0])
        for r in (repo / "dvclive/plots/metrics/train/loss_D.tsv").read_text().split("\n")[1:]
        if r
    ]
    assert steps == list(range(3, 19, 3))  # the curves, rebuilt from the checkpoint, continued
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["steps"] == 18
    assert "FID" in res.stdout  # the summary table is printed at the end


def test_bad_params_fail_the_stage_with_the_key_named(repo, first_run):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["batch_sise"] = 3
    write_params(repo / "params.yaml", params)
    try:
        res = sh([sys.executable, "-m", "flows.train"], repo, check=False)
        assert res.returncode == 2
        assert "train.batch_sise: unknown key" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        del params["train"]["batch_sise"]
        write_params(repo / "params.yaml", params)


def test_main_command_without_a_server_starts_one_and_exits_cleanly(repo, first_run, tmp_path):
    """`ganpipe repro` with no Prefect API configured: it starts its own server on 127.0.0.1,
    sends every queued log and event before stopping it (else Prefect reports
    'Error logging to API' and waits at exit), and leaves nothing running."""
    env = tool_env({k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    res = subprocess.run([sys.executable, "-m", "flows.cli", "repro"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Prefect API: http://127.0.0.1:" in out and os.environ["PREFECT_API_URL"] not in out
    assert "Data and pipelines are up to date" in out
    assert "Error logging to API" not in out


def test_dvc_plots_page_renders_offline_with_vega_inlined(repo, first_run, tmp_path):
    res = sh([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "index.html" in res.stdout
    assert "<script src=" not in page and "cdn.jsdelivr" not in page  # nothing fetched from a CDN
    assert "vega-embed 6" in page and "vegaEmbed" in page  # the libraries are in the page itself
    assert "GAN losses" in page and "loss_D.tsv::loss_D" in page  # the losses together, and each curve alone
    # every curve titled in words (.dvc/plots/ganpipe-curve.json), none of them a flat line of a constant
    assert "'grad_norm_D': 'Gradient norm of D'" in page and "lr_G.tsv" not in page


def test_translate_pipeline_runs_from_one_params_change(tmp_path_factory, prefect_api):
    """task: translate through the same stages: glyph pairs -> CycleGAN -> both ONNX
    directions with parity, translation metrics beside the identity baseline."""
    overlay = merge(TINY, {
        "task": "translate",
        "data": {"source": "glyphs", "image_size": 16, "glyphs": {"chars": ["ascii"]}},
        "model": {"arch": "cyclegan", "g_channels": 8, "d_channels": 8, "n_blocks": 2},
        "train": {"batch_size": 4, "loss": "lsgan"},
    })  # fmt: skip
    root = make_repo(tmp_path_factory.mktemp("translate"), overlay)
    res = sh([sys.executable, "-m", "dvc", "repro"], root)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in res.stdout
    for rel in ["data/prepared/train_A.npy", "data/prepared/val_B.npy", "exports/generator_AB.onnx",
                "exports/generator_BA.onnx", "reports/eval_comparison.png", "reports/samples.png",
                "reports/report.html", "reports/figures/curves.png"]:  # fmt: skip
        assert (root / rel).is_file(), rel
    md = (root / "reports/report.md").read_text()
    assert "## Held-out translations" in md and "## Memorisation" not in md
    assert not (root / "reports/figures/memorisation.png").exists()
    assert not (root / "exports/generator.onnx").exists()
    ev = json.loads((root / "metrics/eval.json").read_text())
    # glyph pairs are paired: L1, PSNR, SSIM beside the distance; the cycle error is CycleGAN's own
    assert list(ev) == ["fid", "fid_position", "l1", "psnr", "ssim", "l1_gain", "cycle_l1_aba", "cycle_l1_bab"]
    details = json.loads((root / "metrics/eval_details.json").read_text())
    assert details["task"] == "translate" and details["l1_identity_baseline"] > 0 and "fid_real_floor" in details
    export = json.loads((root / "metrics/export.json").read_text())
    assert export["parity_passed"] and set(export["directions"]) == {"AB", "BA"}
    assert "Data and pipelines are up to date" in sh([sys.executable, "-m", "dvc", "repro"], root).stdout


def test_dvc_tracked_raw_data_reruns_prepare_and_only_what_changed(repo, first_run):
    """Raw data under data/raw, tracked with `dvc add`, is a dependency of prepare."""
    shapes = repo / "data/raw/shapes"
    for cls, value in (("dark", 30), ("light", 220)):
        (shapes / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (16, 16), value + i).save(shapes / cls / f"{i}.png")
    sh([sys.executable, "-m", "dvc", "add", "data/raw/shapes"], repo)
    assert (repo / "data/raw/shapes.dvc").is_file()
    status = sh([sys.executable, "-m", "dvc", "status", "prepare"], repo).stdout
    assert "modified:" in status and "data/raw" in status
    # the default source (digits) does not read it: prepare reruns, its output is unchanged, nothing else runs
    res = sh([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage 'prepare'" in res.stdout
    for stage in ("evaluator", "reference", "train", "evaluate", "export"):
        assert f"Stage '{stage}' didn't change, skipping" in res.stdout
    # pointed at the tracked folder, a new version of the data reruns prepare and changes its output
    params = yaml.safe_load((repo / "params.yaml").read_text())
    original = dict(params["data"])
    params["data"].update(source="folder", path="data/raw/shapes")
    write_params(repo / "params.yaml", params)
    try:
        sh([sys.executable, "-m", "dvc", "repro", "prepare"], repo)
        manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
        assert manifest["classes"] == ["dark", "light"] and len(manifest["files"]) == 12
        Image.new("L", (16, 16), 99).save(shapes / "dark" / "new.png")
        sh([sys.executable, "-m", "dvc", "add", "data/raw/shapes"], repo)
        assert "data/raw" in sh([sys.executable, "-m", "dvc", "status", "prepare"], repo).stdout
        sh([sys.executable, "-m", "dvc", "repro", "prepare"], repo)
        assert len(json.loads((repo / "data/prepared/manifest.json").read_text())["files"]) == 13
        downstream = sh([sys.executable, "-m", "dvc", "status", "evaluator", "train"], repo).stdout
        assert "data/prepared" in downstream  # the stages below are now out of date, and only through it
    finally:
        params["data"] = original
        write_params(repo / "params.yaml", params)


def broken_folder(root: Path) -> Path:
    """A folder source whose one image cannot be decoded: prepare fails on it (data.on_error fail)."""
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(b"not an image")
    return root


def test_a_failing_prepare_loses_nothing_dvc_checkout_brings_the_dataset_back(repo, first_run, tmp_path):
    """DVC removes a stage's outputs before running it; a prepare that fails leaves the last good
    dataset and reports in DVC's cache, and `dvc checkout` puts them back byte for byte."""
    sh([sys.executable, "-m", "dvc", "repro", "prepare"], repo)
    kept = ["reports/data_report.json", "reports/data_report.md", "reports/data_report_thumbs.png",
            *(p.relative_to(repo).as_posix() for p in sorted((repo / "data/prepared").iterdir()))]  # fmt: skip
    before = {rel: (repo / rel).read_bytes() for rel in kept}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    original = dict(params["data"])
    params["data"].update(source="folder", path=str(broken_folder(tmp_path / "broken")), on_error="fail")
    write_params(repo / "params.yaml", params)
    try:
        res = sh([sys.executable, "-m", "dvc", "repro", "prepare"], repo, check=False)
        assert res.returncode != 0
        assert "cat/a.png" in res.stdout + res.stderr
    finally:
        params["data"] = original
        write_params(repo / "params.yaml", params)
    sh([sys.executable, "-m", "dvc", "checkout"], repo)
    assert {rel: (repo / rel).read_bytes() for rel in kept} == before
    assert sorted(p.name for p in (repo / "data/prepared").iterdir()) == sorted(Path(k).name for k in kept[3:])
    assert "up to date" in sh([sys.executable, "-m", "dvc", "status", "prepare"], repo).stdout


def test_ganpipe_repro_refuses_bad_params_before_dvc_removes_anything(repo, first_run):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["batch_sise"] = 3
    write_params(repo / "params.yaml", params)
    before = outputs(repo)
    try:
        res = sh([sys.executable, "-m", "flows.cli", "repro"], repo, check=False)
    finally:
        del params["train"]["batch_sise"]
        write_params(repo / "params.yaml", params)
    assert res.returncode == 2 and "Running stage" not in res.stdout and "Traceback" not in res.stderr
    assert res.stderr.startswith("ganpipe repro: error: params.yaml: invalid parameters\n"
                                 "  train.batch_sise: unknown key")
    assert outputs(repo) == before  # every output still there, unchanged


def test_a_failing_dvc_repro_fails_the_task_that_ran_it(repo, first_run, prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    params = yaml.safe_load((repo / "params.yaml").read_text())
    original = dict(params["data"])
    params["data"].update(source="folder", path=str(broken_folder(tmp_path / "broken")), on_error="fail")
    write_params(repo / "params.yaml", params)
    try:
        res = sh([sys.executable, "-m", "flows.cli", "repro"], repo, check=False)
    finally:
        params["data"] = original
        write_params(repo / "params.yaml", params)
        sh([sys.executable, "-m", "dvc", "checkout"], repo)
    assert res.returncode == 1 and "cat/a.png" in res.stdout + res.stderr
    assert "dvc repro failed with exit code" in res.stderr

    async def newest_run_dvc_state() -> str:
        async with get_client() as client:
            runs = await client.read_task_runs(limit=200)
            return max((r for r in runs if r.name.startswith("run_dvc")), key=lambda r: r.created).state.type.value

    assert asyncio.run(newest_run_dvc_state()) == "FAILED"


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


def commit_run(root: Path) -> None:
    """Commit the workspace as a whole run (what an earlier failed run removed comes back from DVC's cache)."""
    sh([sys.executable, "-m", "dvc", "checkout"], root)
    sh(["git", "add", "-A"], root)
    sh([*GIT, "commit", "-qm", "a run", "--allow-empty"], root)


def test_models_are_dvc_artifacts_fetched_by_name(repo, first_run, tmp_path):
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        declared = dvc_repo.artifacts.read()["dvc.yaml"]
    assert {name: (a.path, a.type, a.labels) for name, a in declared.items()} == {
        "generator": ("models/generator.pt", "model", ["gan", "pytorch"]),
        "generator-onnx": ("exports", "model", ["gan", "onnx"]),
    }
    assert all(a.desc for a in declared.values())
    commit_run(repo)
    for name in declared:  # a version is an annotated tag name@vX.Y.Z; DVC reads the file from the repository's cache
        sh([*GIT, "tag", "-a", f"{name}@v1.0.0", "-m", "v1"], repo)
        sh([sys.executable, "-m", "dvc", "artifacts", "get", str(repo), name, "-o", str(tmp_path / name)], tmp_path)
    assert (tmp_path / "generator").read_bytes() == (repo / "models/generator.pt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "generator-onnx").iterdir()) == ["generator.onnx", "model_card.json"]


def test_a_promotion_leaves_git_status_clean(repo, first_run):
    commit_run(repo)
    sh([sys.executable, "-m", "flows.cli", "registry", "promote"], repo)
    assert (repo / "registry/champion").is_file()
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""  # registry/ is ignored, not untracked noise


def test_ganpipe_exp_refuses_a_bad_set_value_before_dvc_runs_anything(repo, first_run, tmp_path):
    commit_run(repo)
    config = tmp_path / "steps.yaml"
    config.write_text("train:\n  steps: 18\n")
    before = outputs(repo)
    for extra, named in ((["-S", "export.opset=abc"], "export.opset: Input should be a valid integer"),
                         (["-S", "train.lr_g=1e-3,-1"], "train.lr_g: Input should be greater than 0"),  # a sweep point
                         (["--set-param=train.stepz=3"], "Could not override 'train.stepz'")):  # fmt: skip
        res = sh([sys.executable, "-m", "flows.cli", "exp", str(config), *extra], repo, check=False)
        assert res.returncode == 2 and "Running stage" not in res.stdout, extra
        assert res.stderr.startswith("ganpipe exp: error: ") and named in res.stderr, res.stderr
        assert sh(["git", "status", "--porcelain"], repo).stdout == "", extra  # params.yaml untouched too
        assert outputs(repo) == before


def test_a_bad_value_given_to_raw_dvc_exp_run_is_undone_by_git_and_dvc_checkout(repo, first_run):
    """Raw `dvc exp run -S` applies the value and removes the first changed stage's outputs before
    that stage can refuse it (with the key named); `git checkout . && dvc checkout` undoes it all."""
    commit_run(repo)
    before = outputs(repo)
    for key in ("data.image_size", "train.steps", "export.opset"):
        res = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", f"{key}=abc"], repo, check=False)
        assert res.returncode != 0
        assert f"\n  {key}: Input should be a valid integer" in res.stdout + res.stderr  # the stage names the key
        sh(["git", "checkout", "."], repo)
        sh([sys.executable, "-m", "dvc", "checkout"], repo)
        assert sh(["git", "status", "--porcelain"], repo).stdout == "", key
        assert outputs(repo) == before, key
    assert "up to date" in sh([sys.executable, "-m", "dvc", "status"], repo).stdout


def test_plots_diff_in_a_fresh_clone_finds_every_plot_of_the_committed_run(repo, first_run, tmp_path):
    commit_run(repo)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)  # no DVC cache, no remote
    res = sh([sys.executable, "-m", "dvc", "plots", "diff", "HEAD", "-o", str(tmp_path / "plots")], clone)
    assert "failed to load" not in res.stdout + res.stderr
    samples = {p.name.split("_")[0] for p in (tmp_path / "plots/static").glob("*_dvclive_plots_images_samples_*.png")}
    assert samples == {"HEAD", "workspace"}  # the sample grids of both revisions, next to the curves


def test_rerunning_an_experiment_name_says_so_in_one_line(repo, first_run, tmp_path):
    commit_run(repo)
    config = tmp_path / "tolerant.yaml"
    config.write_text("export:\n  parity_tolerance: 0.001\n")  # reruns export only
    run = [sys.executable, "-m", "flows.cli", "exp", str(config)]
    assert "Running stage 'export'" in sh(run, repo).stdout
    again = sh(run, repo, check=False)
    assert again.returncode == 2 and "Running stage" not in again.stdout
    assert again.stderr.splitlines() == [
        f"ganpipe exp: error: experiment 'tolerant' already exists on this commit (dvc exp show); run it again under "
        f"another name (ganpipe exp {config} --name tolerant-2) or replace it (ganpipe exp {config} -f)"
    ]
    assert "Ran experiment(s): tolerant" in sh([*run, "-f"], repo).stdout  # -f goes through to dvc exp run


def test_a_second_experiment_while_one_runs_is_refused_in_one_line_and_changes_nothing(repo, first_run, tmp_path):
    """`dvc exp run -S` rewrote params.yaml before failing on DVC's lock, and the first experiment
    then trained with the second's params; now the second is refused before touching anything."""
    import time

    commit_run(repo)
    first_cfg, second_cfg = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first_cfg.write_text("export:\n  parity_tolerance: 0.003\n")  # reruns export only: seconds
    second_cfg.write_text("train:\n  steps: 30\n")
    lock = repo / ".dvc/tmp/ganpipe-workspace.lock"
    first = subprocess.Popen([sys.executable, "-m", "flows.cli", "exp", str(first_cfg)], cwd=repo, env=tool_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (lock.is_file() and f"pid {first.pid}:" in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first experiment never took the lock"
            time.sleep(0.05)
        params = (repo / "params.yaml").read_bytes()
        second = sh([sys.executable, "-m", "flows.cli", "exp", str(second_cfg)], repo, check=False)
        assert first.poll() is None  # still running: what follows compares against a live run
        assert (repo / "params.yaml").read_bytes() == params
        out, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert second.returncode == 2 and "Running stage" not in second.stdout
    assert second.stderr.splitlines() == [
        f"ganpipe exp: error: another experiment or pipeline run is running in this workspace (pid {first.pid}: "
        f"ganpipe exp {first_cfg}); wait for it to finish (dvc exp run --queue lines experiments up)"
    ]
    assert first.returncode == 0, err[-3000:]
    assert "Ran experiment(s): first" in out
    ref = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], repo).stdout.split()
    (first_ref,) = [r for r in ref if r.endswith("/first")]
    ran = yaml.safe_load(sh(["git", "show", f"{first_ref}:params.yaml"], repo).stdout)
    committed = yaml.safe_load(sh(["git", "show", "HEAD:params.yaml"], repo).stdout)
    assert ran == set_keys(committed, {"export.parity_tolerance": 0.003})  # its own params, none of the second's
    assert not [r for r in ref if r.endswith("/second")]
