"""Orchestration: what running the pipeline through `ganpipe repro` (DVC + one Prefect flow per stage)
costs beyond each stage's work, in a temporary git + DVC copy of the project with the tests' tiny params.

How the time is split: each stage's work is its Prefect task run (the one task wrapping the library call:
prepare(), train(), ...), as the Prefect server recorded it. Around it, DVC's own output gives the stage's
wall time: from DVC's "Running stage" line to its lock-file update, each line timestamped as it arrives
(every process unbuffered). Both are wall-clock times on this machine, so they subtract.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from common import Context, fmt, summary

ROOT = Path(__file__).resolve().parents[1]


def timed_lines(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, list[tuple[float, str]]]:
    """Run `cmd`, stamping each output line (stdout and stderr) with the wall-clock time it arrived;
    return the start time, the seconds it took and the stamped lines."""
    start, t0 = time.time(), time.perf_counter()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        assert p.stdout is not None
        lines = [(time.time(), line.rstrip("\n")) for line in p.stdout]
    seconds = time.perf_counter() - t0
    if p.returncode:
        tail = "\n".join(text for _, text in lines[-40:])
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {p.returncode}:\n{tail}")
    return start, seconds, lines


def dvc_stage_spans(lines: list[tuple[float, str]]) -> dict[str, tuple[float, float]]:
    """Stage -> (time of DVC's "Running stage 'X':", time of the lock-file update after it)."""
    spans, current = {}, None
    for t, text in lines:
        if m := re.match(r"Running stage '([^']+)':", text):
            current = (m[1], t)
        elif current and re.match(r"(Generating|Updating) lock file", text):
            spans[current[0]] = (current[1], t)
            current = None
    return spans


def prefect_runs() -> tuple[list, list]:
    """Every flow run and task run the (fresh) server holds."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(limit=200), client.read_task_runs(limit=200)


def _ts(d: datetime) -> float:
    return d.timestamp()


def stage_table(spans: dict[str, tuple[float, float]], flows: list, tasks: list) -> dict:
    """For each stage that ran: its DVC span split into startup, the work (its first task run), the rest of
    its Prefect flow, and what follows the flow (log/event drain, exit, DVC caching the outputs, lock)."""
    by_stage = {t.split(":", 1)[1]: f for f in flows for t in f.tags if t.startswith("stage:")}
    out = {}
    for stage, (start, end) in spans.items():
        flow = by_stage[stage]
        # the stage's first task makes its outputs (evaluate's second one only publishes a Prefect artifact)
        task = min((t for t in tasks if t.flow_run_id == flow.id), key=lambda t: t.start_time)
        f0, f1, t0, t1 = _ts(flow.start_time), _ts(flow.end_time), _ts(task.start_time), _ts(task.end_time)
        wall, work = end - start, t1 - t0
        times = {"wall_s": wall, "work_s": work, "startup_s": f0 - start, "flow_around_task_s": (f1 - f0) - work,
                 "after_flow_s": end - f1, "overhead_s": wall - work}  # fmt: skip
        out[stage] = {k: round(v, 2) for k, v in times.items()} | {"task": task.name.rsplit("-", 1)[0]}
    return out


def run(ctx: Context) -> dict:
    missing = [m for m in ("dvc", "dvclive", "prefect") if importlib.util.find_spec(m) is None]
    if missing or not shutil.which("git"):
        return {"skipped": f"needs {', '.join(missing) or 'git'} (not installed here)"}
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.stage import tool_env

    sys.path.insert(0, str(ROOT / "tests"))
    from project_copy import TINY, make_repo  # the pipeline tests' repository copy and tiny params

    # quick: a one-stage pipeline brought up to date by plain `dvc repro prepare` (the stage runs as under ganpipe),
    # then one no-op `ganpipe repro prepare`; full: the whole pipeline through ganpipe, then repeated no-ops
    targets = ["prepare"] if ctx.quick else []
    repeats = 1 if ctx.quick else ctx.repeats()
    ganpipe = [sys.executable, "-m", "flows.cli", "repro", *targets]  # `ganpipe repro`, with the copy's code
    dvc = [sys.executable, "-m", "dvc", "repro", *targets]
    overlay = TINY
    repo = make_repo(ctx.tmp / "orchestration-repo", overlay)
    t0 = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):  # as tests/conftest.py's prefect_api: one server for all
        api_startup = time.perf_counter() - t0
        env = tool_env() | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"}
        first_start, first_s, lines = timed_lines(dvc if ctx.quick else ganpipe, repo, env)
        noop = [timed_lines(ganpipe, repo, env) for _ in range(repeats)]
        dvc_noop = [timed_lines(dvc, repo, env)[1] for _ in range(repeats)]
        flows, tasks = prefect_runs()
    if any("Running stage" in text for _, _, ls in noop for _, text in ls):
        raise RuntimeError("a repeated `ganpipe repro` ran a stage: the pipeline was not up to date")
    pipelines = sorted((f for f in flows if "stage:pipeline" in f.tags), key=lambda f: f.start_time)
    run_dvc = {t.flow_run_id: _ts(t.end_time) - _ts(t.start_time) for t in tasks if t.name.startswith("run_dvc")}

    def split(start: float, seconds: float, flow) -> dict:
        """A `ganpipe repro` process: startup (imports, Prefect API check, flow-run creation), `dvc repro`, the rest."""
        startup, inner = _ts(flow.start_time) - start, run_dvc[flow.id]
        return {"wall_s": seconds, "startup_s": startup, "dvc_repro_s": inner, "rest_s": seconds - startup - inner}

    noops = [split(start, s, f) for (start, s, _), f in zip(noop, pipelines[-repeats:], strict=True)]
    first = {"wall_s": first_s} if ctx.quick else split(first_start, first_s, pipelines[0])
    return {
        "first_command": " ".join(["dvc" if ctx.quick else "ganpipe", "repro", *targets]),
        "noop_command": " ".join(["ganpipe", "repro", *targets]),
        "params_overlay": overlay,
        "prefect_api": "prefect_test_harness (a temporary local server, shared by every run, as in the tests)",
        "prefect_api_startup_s": round(api_startup, 2),
        "versions": {m: importlib.metadata.version(m) for m in ("dvc", "prefect", "torch")},
        "ganpipe_threads": os.environ.get("GANPIPE_THREADS"),
        "first_run": {k: round(v, 2) for k, v in first.items()},
        "stages": stage_table(dvc_stage_spans(lines), flows, tasks),
        "noop": {k: summary([n[k] for n in noops], 2) for k in noops[0]} | {"plain_dvc_s": summary(dvc_noop, 2)},
    }


def markdown(result: dict) -> str:
    title = "### Orchestration overhead"
    if "skipped" in result:
        return f"{title}\n\nSkipped: {result['skipped']}\n"
    stages = [f"| {name} | {s['wall_s']:.2f} | {s['work_s']:.2f} | {s['startup_s']:.2f} | "
              f"{s['flow_around_task_s']:.2f} | {s['after_flow_s']:.2f} | {s['overhead_s'] / s['wall_s']:.0%} |"
              for name, s in result["stages"].items()]  # fmt: skip
    n, first, cmd = result["noop"], result["first_run"], f"`{result['noop_command']}`"
    noop = [(f"{cmd}, everything up to date", n["wall_s"]),
            ("– startup: imports, Prefect API, flow run", n["startup_s"]),
            ("– `dvc repro` inside it", n["dvc_repro_s"]), ("– the rest: metrics, artifacts, exit", n["rest_s"]),
            (f"plain `{result['noop_command'].replace('ganpipe', 'dvc')}`, up to date", n["plain_dvc_s"])]  # fmt: skip
    whole = f", {first['startup_s']:.1f} s of it before the pipeline flow started" if "startup_s" in first else ""
    return "\n".join([
        title, "",
        f"`{result['first_command']}` run once ({first['wall_s']:.1f} s{whole}) in a temporary git + DVC copy of "
        f"the project with the tests' tiny params, against one local Prefect server (started once, "
        f"{result['prefect_api_startup_s']:.1f} s). Seconds per stage in that run: the work is the stage's Prefect "
        "task run (the library call it wraps); the wall time runs from DVC's \"Running stage\" line to its lock-file "
        "update (lines timestamped as they arrive), split into the process's startup (until its flow run starts), "
        "Prefect's flow around the task, and what follows the flow (exit, DVC caching the outputs).", "",
        "| stage | wall | work | startup | flow around task | after the flow | overhead share |",
        "|---|---|---|---|---|---|---|", *stages, "",
        f"Then {cmd} with nothing to do (median of {n['wall_s']['repeats']}, min–max), split the same way through "
        "its Prefect pipeline flow run, beside plain DVC:", "",
        "| | seconds |", "|---|---|", *(f"| {label} | {fmt(v, ' s')} |" for label, v in noop), "",
    ])  # fmt: skip
