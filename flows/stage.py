"""What every stage flow shares: uncached tasks and the `python -m flows.<stage>` entry."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.config import load_params
from pipeline.errors import UserError
from pipeline.layout import PARAMS


def stage_task(fn: Callable | None = None, **options) -> Callable:
    """A Prefect task without Prefect's result cache: DVC already caches every stage's
    outputs, and a second cache keyed on arguments would return stale results when only
    the files behind a path changed. Tasks pass file paths, never arrays or tensors."""
    make = task(cache_policy=NO_CACHE, log_prints=True, **options)
    return make(fn) if fn is not None else make


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with this interpreter's folder first on
    PATH, so `dvc` and the `python` in dvc.yaml's stage commands run in this environment
    even when it was not activated."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_stage(flow_fn: Callable, argv: list[str] | None = None) -> int:
    """Validate params, run the stage's flow, turn user errors into exit code 2."""
    name = getattr(flow_fn, "name", flow_fn.__name__)
    parser = argparse.ArgumentParser(prog=f"ganpipe {name}", description=(flow_fn.__doc__ or "").strip())
    parser.add_argument("--params", default=str(PARAMS), help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        load_params(args.params)  # fail before Prefect starts, with the key named
        flow_fn(params_path=args.params)
    except UserError as err:
        print(f"ganpipe {name}: error: {err}", file=sys.stderr)
        return 2
    return 0
