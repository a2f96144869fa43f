"""`ganpipe repro`, `exp`, `push`, `bench` and one command per stage: running the pipeline (in a local
Prefect server's flows), its experiments, sharing its runs, and its benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from flows.cli.common import int_arg
from pipeline import layout
from pipeline.artifacts import atomic_path
from pipeline.config import ConfigError
from pipeline.errors import UserError

STAGES = ("prepare", "evaluator", "reference", "train", "evaluate", "export")


def _run_pipeline(dvc_args: list[str]) -> int:
    from flows.pipeline import experiment_name, export_details, pipeline_flow, summary_markdown
    from flows.server import describe, local_prefect_api
    from flows.stage import run_labelled

    with local_prefect_api() as url:
        print(describe(url), file=sys.stderr)
        state = run_labelled(pipeline_flow, {"dvc_args": dvc_args}, "pipeline", layout.PARAMS,
                             experiment_name(dvc_args), return_type="state")  # fmt: skip
    if not state.is_completed():
        print(f"ganpipe {'exp' if dvc_args[0] == 'exp' else 'repro'}: {state.message}", file=sys.stderr)
        return 1
    print(summary_markdown(state.result(), export_details()))
    return 0


def _command_line() -> str:
    return " ".join(["ganpipe", *sys.argv[1:]])


def _cmd_repro(args: argparse.Namespace) -> int:
    from pipeline.config import load_params
    from pipeline.workspace import workspace_lock

    with workspace_lock(_command_line()):  # an experiment running here would change params under DVC's feet
        load_params(layout.PARAMS)  # before DVC removes any stage's outputs
        _repair_dvc_locks()
        return _run_pipeline(["repro", *args.dvc_args])


def _repair_dvc_locks() -> None:
    from pipeline.workspace import repair_dvc_rwlock

    if said := repair_dvc_rwlock():
        print(f"ganpipe: {said}", file=sys.stderr)


def _cmd_push(args: argparse.Namespace) -> int:
    from dvc.exceptions import DvcException

    from flows.push import push_runs

    try:
        sent = push_runs(args.remote)
    except DvcException as err:  # no remote, an unreachable one, missing credentials: DVC's words, one line
        raise UserError(" ".join(str(err).split())) from None
    print(f"pushed the outputs and the run-cache, and {sent} file(s) of other runs the run-cache names")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """The benchmark suite lives beside the package (bench/), in the repository: run it there."""
    script = Path(__file__).resolve().parents[2] / "bench" / "run.py"
    if not script.is_file():
        raise UserError(f"the benchmark suite is not here ({script} is missing): run `ganpipe bench` from a clone "
                        "of the repository (pip install -e .)")  # fmt: skip
    return subprocess.run([sys.executable, str(script), *args.dvc_args]).returncode


def overrides(overlay: dict, prefix: str = "") -> list[str]:
    """Flatten a params overlay into `dvc exp run -S key=value` arguments (values as JSON,
    which DVC's override grammar reads back as the same types)."""
    out = []
    for key, value in overlay.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"++{prefix}{key}={json.dumps(value, separators=(',', ':'))}")  # ++: set or add
    return out


def _cmd_exp(args: argparse.Namespace) -> int:
    from pipeline.workspace import workspace_lock

    # held before params.yaml is read or put back, and until DVC is done: `dvc exp run -S` rewrites
    # params.yaml before DVC takes its own lock, so a second experiment would change the first one's
    with workspace_lock(_command_line()):
        _repair_dvc_locks()
        return _exp(args)


def _exp(args: argparse.Namespace) -> int:
    from pipeline.config import load_params, parse_params, read_yaml

    overlay: dict = {}
    for path in args.config:  # several overlays: each laid on the ones before it
        layer = read_yaml(path, "give the overlay's path, e.g. configs/wgan-gp.yaml") or {}
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: must be a mapping of params groups")
        overlay = merge_overlay(overlay, layer)
    name = args.name or "-".join(os.path.splitext(os.path.basename(path))[0] for path in args.config)
    if not {"-f", "--force"} & set(args.dvc_args) and _experiment_exists(name):  # DVC's own refusal reads as a failure
        configs = " ".join(args.config)
        rerun = f"ganpipe exp {configs}" + (f" --name {name}" if args.name else "")
        raise UserError(f"experiment {name!r} already exists on this commit (dvc exp show); run it again under another "
                        f"name (ganpipe exp {configs} --name {name}-2) or replace it ({rerun} -f)")  # fmt: skip
    _committed_params()
    base = load_params(layout.PARAMS).model_dump(mode="json")
    parse_params(merge_overlay(base, overlay), " + ".join(args.config))  # validate the combination before running
    validate_set_params([*overrides(overlay), *set_params(args.dvc_args)])  # and with the user's own -S
    sets = [x for kv in overrides(overlay) for x in ("-S", kv)]
    return _run_pipeline(["exp", "run", "--name", name, *sets, *args.dvc_args])


def set_params(dvc_args: list[str]) -> list[str]:
    """The values of every `-S` / `--set-param` among `dvc exp run` arguments, in order."""
    found, rest = [], iter(dvc_args)
    for arg in rest:
        if arg in ("-S", "--set-param"):
            found.append(next(rest, ""))
        elif arg.startswith("--set-param="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-S"):
            found.append(arg[2:])
    return found


def validate_set_params(sets: list[str]) -> None:
    """Validate params.yaml as `dvc exp run -S <sets>` would leave it (each point of a sweep), with
    DVC's own override parser, before DVC removes any stage's outputs; ConfigError names the -S
    values and the key. Overrides of other params files than params.yaml are left to DVC."""
    import shutil
    import tempfile

    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps
    from hydra.errors import HydraException

    from pipeline.config import parse_params, read_yaml

    ours = {p: o for p, o in to_path_overrides(sets).items() if Path(p) == layout.PARAMS}
    if not ours:
        return
    try:
        points = get_hydra_sweeps(ours)
    except (DvcException, HydraException) as err:
        raise ConfigError(f"-S {' '.join(sets)}: {str(err).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory(prefix="ganpipe-params-") as tmp:
        copy = Path(tmp) / layout.PARAMS.name
        for point in points:
            (values,) = point.values()
            shutil.copyfile(layout.PARAMS, copy)
            try:
                apply_overrides(copy, values)
            except DvcException as err:
                cause = f" ({str(err.__cause__).splitlines()[0]})" if err.__cause__ else ""
                raise ConfigError(f"-S {' '.join(values)}: {err}{cause}") from None
            parse_params(read_yaml(copy), f"{layout.PARAMS} with -S {' '.join(values)}")


def _experiment_exists(name: str) -> bool:
    """Whether HEAD already has an experiment `name`, the check `dvc exp run --name` makes."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.experiments.refs import ExpRefInfo
    from scmrepo.exceptions import SCMError

    try:
        with Repo() as repo:
            return bool(repo.scm.get_ref(str(ExpRefInfo(repo.scm.get_rev(), name))))
    except (DvcException, SCMError):  # not a DVC repository, no commit yet: `dvc exp run` says so itself
        return False


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, check=False)


def _committed_params() -> None:
    """Lay overlays on the committed params.yaml. `dvc exp run` leaves the last experiment's params
    in the workspace, and the next `-S` would be laid on them: an experiment's params there are
    put back to the commit's (the experiment keeps them: `dvc exp apply`); an edit of the user's
    is refused, never overwritten."""
    committed, current = _git("show", f"HEAD:{layout.PARAMS.as_posix()}"), layout.PARAMS.read_bytes()
    if committed.returncode != 0 or committed.stdout == current:
        return  # no commit or no committed params (DVC says so itself), or nothing changed
    head = _git("rev-parse", "HEAD").stdout.decode().strip()
    refs = _git("for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}/").stdout.decode().split()
    left_by = [r.rsplit("/", 1)[1] for r in refs
               if _git("show", f"{r}:{layout.PARAMS.as_posix()}").stdout == current]  # fmt: skip
    if not left_by:
        raise UserError(f"{layout.PARAMS}: has changes that are not committed; an overlay is laid on the committed "
                        f"params: commit them (or `git checkout {layout.PARAMS}`) and run again")  # fmt: skip
    with atomic_path(layout.PARAMS) as tmp:
        tmp.write_bytes(committed.stdout)
    print(f"{layout.PARAMS}: held experiment {left_by[0]!r}'s params; put back the committed ones "
          f"(`dvc exp apply {left_by[0]}` brings them back)", file=sys.stderr)  # fmt: skip


def merge_overlay(base: dict, over: dict) -> dict:
    """`base` params with the keys of `over` laid on top, group by group."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _stage_flows() -> dict:
    """Stage name -> its Prefect flow (what dvc.yaml's `python -m flows.<stage>` runs)."""
    from flows.evaluate import evaluate_flow
    from flows.evaluator import evaluator_flow
    from flows.export import export_flow
    from flows.prepare import prepare_flow
    from flows.reference import reference_flow
    from flows.train import train_flow

    return {"prepare": prepare_flow, "evaluator": evaluator_flow, "reference": reference_flow, "train": train_flow,
            "evaluate": evaluate_flow, "export": export_flow}  # fmt: skip


def _cmd_stage(args: argparse.Namespace) -> int:
    from flows.stage import run_stage

    if args.command == "train":  # the launch settings reach the stage as the DVC stage gets them
        from flows.train import check_launch
        from pipeline.training.worker import Rendezvous

        os.environ.update(Rendezvous(args.rdzv_endpoint, args.rdzv_id, args.max_restarts).env())
        return run_stage(_stage_flows()["train"], ["--params", args.params], check=check_launch)
    return run_stage(_stage_flows()[args.command], ["--params", args.params])


def add_parser(sub: argparse._SubParsersAction) -> None:
    repro = sub.add_parser("repro", help="run `dvc repro` against a local Prefect server (started if needed)",
                           epilog="Other arguments go to dvc repro, e.g. `ganpipe repro --force train`.")  # fmt: skip
    repro.set_defaults(fn=_cmd_repro, passes_through=True)

    exp = sub.add_parser("exp", help="run a shipped params overlay (configs/*.yaml) as a DVC experiment",
                         epilog="Other arguments go to dvc exp run: -S key=value (checked like the overlay, each "
                                "sweep point too), -f, --queue, --temp, ... e.g. `ganpipe exp "
                                "configs/stylegan2-digits.yaml -S train.steps=500 -f`.")  # fmt: skip
    exp.add_argument("config", nargs="+", help="YAML with only the params that differ from params.yaml; several "
                     "are laid on each other in order (configs/stacked-digits.yaml configs/wgan-gp.yaml)")  # fmt: skip
    exp.add_argument("--name", help="experiment name (default: the files' stems, joined by '-')")
    exp.set_defaults(fn=_cmd_exp, passes_through=True)

    push = sub.add_parser("push", help="dvc push --run-cache, plus the files of every run the run-cache names, so "
                          "another clone restores those runs (dvc repro --pull) instead of rerunning them")  # fmt: skip
    push.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    push.set_defaults(fn=_cmd_push)

    bench = sub.add_parser("bench", help="the benchmark suite: reports/bench.json and docs/benchmarks.md",
                           epilog="Arguments go to bench/run.py: --quick, --device, --out, benchmark names; "
                                  "`python bench/run.py --help` lists them.")  # fmt: skip
    bench.set_defaults(fn=_cmd_bench, passes_through=True)

    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage's flow (what dvc.yaml calls)")
        p.add_argument("--params", default=str(layout.PARAMS), help="the params file to validate and run with")
        p.set_defaults(fn=_cmd_stage)
        if stage == "train":
            _launch_options(p)


def _launch_options(p: argparse.ArgumentParser) -> None:
    """This machine's share of a run over several (docs/scaling.md)."""
    from pipeline.training.worker import ENDPOINT_ENV, ID_ENV, RESTARTS_ENV

    p.add_argument("--rdzv-endpoint", default=os.environ.get(ENDPOINT_ENV), metavar="HOST:PORT",
                   help="where the train.nnodes machines meet (torchrun's c10d rendezvous; "
                        f"{ENDPOINT_ENV})")  # fmt: skip
    p.add_argument("--rdzv-id", default=os.environ.get(ID_ENV) or "ganpipe",
                   help=f"one name for the run, the same on every machine ({ID_ENV})")  # fmt: skip
    p.add_argument("--max-restarts", type=int_arg(0), default=os.environ.get(RESTARTS_ENV) or "0",
                   help=f"restart every process from the last checkpoint after one fails ({RESTARTS_ENV})")  # fmt: skip
