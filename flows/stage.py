"""What every stage flow shares: uncached tasks, how flow runs are named, tagged and linked to
the pipeline run that started them, and the `python -m flows.<stage>` entry.

A stage records a Prefect flow run when a Prefect API is configured (`ganpipe repro` and
`ganpipe exp` start a local server and set it; PREFECT_API_URL or the active Prefect profile
name a lasting one). Without one, as under a plain `dvc repro`, the stage runs as plain Python:
Prefect would otherwise start a temporary server in every stage process (about 10 s each on
2 cores) whose runs and links die with it. Prefect is imported only when it is used, so a plain
stage does not pay its import (about 3 s) either.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import logging
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import load_params
from pipeline.errors import UserError
from pipeline.layout import PARAMS

# Set for the stage processes `dvc repro` / `dvc exp run` starts: the task run that runs DVC
# (each stage's flow run becomes its child) and the experiment's name.
PARENT_ENV, EXPERIMENT_ENV = "GANPIPE_PARENT_TASK_RUN_ID", "GANPIPE_EXPERIMENT"


_plain = False  # True while a stage runs without Prefect (run_stage decides)


class _Deferred:
    """A function that becomes a Prefect task or flow the first time Prefect runs it; called
    while a stage runs without Prefect, it is the plain function."""

    def __init__(self, fn: Callable, make: Callable[[Callable], Any]):
        functools.update_wrapper(self, fn)
        self.fn, self._make, self._prefect = fn, make, None

    @property
    def prefect(self) -> Any:
        if self._prefect is None:
            self._prefect = self._make(self.fn)
        return self._prefect

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs) if _plain else self.prefect(*args, **kwargs)


def plain_run() -> bool:
    """Whether the running stage runs without Prefect."""
    return _plain


def stage_task(fn: Callable | None = None, **options) -> Callable:
    """A Prefect task without Prefect's result cache: DVC already caches every stage's
    outputs, and a second cache keyed on arguments would return stale results when only
    the files behind a path changed. Tasks pass file paths, never arrays or tensors."""

    def make(f: Callable) -> Any:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        return task(cache_policy=NO_CACHE, log_prints=True, **options)(f)

    return _Deferred(fn, make) if fn is not None else (lambda f: _Deferred(f, make))


def stage_flow(name: str) -> Callable[[Callable], _Deferred]:
    """The flow of stage `name` (`python -m flows.<name>`), built when Prefect first runs it."""

    def make(f: Callable) -> Any:
        from prefect import flow

        return flow(name=name)(f)

    def wrap(fn: Callable) -> _Deferred:
        deferred = _Deferred(fn, make)
        deferred.name = name
        return deferred

    return wrap


def prefect_api_configured(environ: dict[str, str] | None = None) -> bool:
    """Whether this process has a Prefect API to record runs in: PREFECT_API_URL in the environment
    or in the active profile ($PREFECT_PROFILE, else `active`) of $PREFECT_HOME/profiles.toml, the two
    places `ganpipe`, `prefect config set` and `prefect profile use` write it. Read without
    importing Prefect, which costs more than a small stage's work."""
    env = os.environ if environ is None else environ
    if env.get("PREFECT_API_URL"):
        return True
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    active = env.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with this interpreter's folder first on
    PATH, so `dvc` and the `python` in dvc.yaml's stage commands run in this environment
    even when it was not activated."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def child_env(experiment: str | None) -> dict[str, str]:
    """tool_env() for a DVC command run by a task: the stage flow runs it starts become children
    of this task run and are labelled with `experiment`."""
    from prefect.runtime import task_run

    env = {k: v for k, v in tool_env().items() if k != EXPERIMENT_ENV}
    return {**env, PARENT_ENV: str(task_run.id), **({EXPERIMENT_ENV: experiment} if experiment else {})}


def _short_rev() -> str:
    # not pipeline.provenance.git_revision: every stage would then depend on provenance.py
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def run_labels(stage: str, params_path: Path | str, experiment: str | None = None) -> tuple[str, list[str]]:
    """A flow run's name and tags, e.g. "train · exp wgan · params 3f2a1b0 · git 5235b28" and ["ganpipe",
    "stage:train", "exp:wgan", "params:3f2a1b0", "git:5235b28"] (params: sha256 of the params file's bytes)."""
    pairs = [("exp", experiment)] if experiment else []
    pairs += [("params", hashlib.sha256(Path(params_path).read_bytes()).hexdigest()[:7]), ("git", _short_rev())]
    name = " · ".join([stage, *(f"{k} {v}" for k, v in pairs)])
    return name, ["ganpipe", f"stage:{stage}", *(f"{k}:{v}" for k, v in pairs)]


def run_labelled(flow_fn, parameters: dict, stage: str, params_path: Path | str, experiment: str | None = None,
                 parent: str | None = None, return_type: str = "result"):  # fmt: skip
    """Run `flow_fn` as a flow run labelled by `run_labels`, the child of task run `parent` (an id,
    possibly from another process) if given."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    name, tags = run_labels(stage, params_path, experiment)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow_fn, name=name, parameters=parameters, tags=tags, parent_task_run_id=parent)
    return run_flow(flow_fn, flow_run=run, parameters=parameters, return_type=return_type)


@contextlib.contextmanager
def library_logs(level: int = logging.INFO) -> Iterator[None]:
    """Records of the library's loggers (`pipeline.*`) at `level` and above go to the running
    flow's Prefect logs too (through Prefect's APILogHandler), as well as to the console."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("pipeline")
    handler, old = APILogHandler(level), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), level))
    runs = [logging.getLogger(n) for n in ("prefect.task_runs", "prefect.flow_runs")]
    for run_logger in runs:
        run_logger.addFilter(_no_user_error_tracebacks)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
        for run_logger in runs:
            run_logger.removeFilter(_no_user_error_tracebacks)


def _no_user_error_tracebacks(record: logging.LogRecord) -> bool:
    """Prefect logs every failed task and flow run with its traceback; a user error (a full disk,
    a bad input file) keeps its one line there, and run_stage prints it once more, as the error."""
    if record.exc_info and isinstance(record.exc_info[1], UserError):
        record.exc_info, record.exc_text = None, None
    return True


def run_stage(flow_fn: _Deferred, argv: list[str] | None = None, check: Callable | None = None) -> int:
    """Validate params (and `check(params)`, the stage's own), run the stage's flow (without Prefect
    when no Prefect API is configured), turn user errors into exit code 2."""
    global _plain
    name = flow_fn.name
    parser = argparse.ArgumentParser(prog=f"ganpipe {name}", description=(flow_fn.__doc__ or "").strip())
    parser.add_argument("--params", default=str(PARAMS), help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)  # fail before Prefect starts, with the key named
        if check is not None:
            check(params)
        if not prefect_api_configured():
            print(f"ganpipe {name}: no Prefect API configured, so no flow run is recorded (`ganpipe repro` records "
                  "one per stage)", file=sys.stderr)  # fmt: skip
            _plain = True
            try:
                with console_logs():
                    flow_fn.fn(params_path=args.params)
            finally:
                _plain = False
            return 0
        with library_logs():
            run_labelled(flow_fn.prefect, {"params_path": args.params}, name, args.params,
                         os.environ.get(EXPERIMENT_ENV), os.environ.get(PARENT_ENV))  # fmt: skip
    except UserError as err:
        print(f"ganpipe {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


@contextlib.contextmanager
def console_logs(level: int = logging.INFO) -> Iterator[None]:
    """Records of the library's loggers (`pipeline.*`) at `level` and above on stderr, as Prefect's
    console handler shows them when a stage runs in Prefect."""
    logger = logging.getLogger("pipeline")
    handler, old = logging.StreamHandler(), logger.level
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                                           "%H:%M:%S"))  # fmt: skip
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), level))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
