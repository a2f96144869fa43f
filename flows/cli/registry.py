"""`ganpipe registry`, `retrain` and `schedule`: the model registry's versions and champion, and the
retraining flow that promotes a better model, run once or on a schedule."""

from __future__ import annotations

import argparse
import json
import os
import sys

from flows.cli.common import fraction_arg
from pipeline import layout
from pipeline.errors import UserError


def _cmd_registry(args: argparse.Namespace) -> int:
    from pipeline.registry import Registry

    if args.version and args.action != "show":
        raise UserError(f"{args.action} takes no version (got {args.version!r}); only show does")
    reg = Registry(args.registry)
    try:
        if args.action == "list":
            return _list_registry(reg, args.registry)
        if args.action == "show":
            print(json.dumps(reg.info(args.version), indent=2))
        elif args.action == "promote":
            version = reg.promote(args.workdir, reason="promoted by hand")
            print(f"promoted {version}; it is now the champion")
        else:
            print(f"rolled back: {reg.rollback()} is the champion again")
    except OSError as err:  # a registry on a full or read-only disk, a file where a folder belongs, ...
        raise UserError(f"{err.filename or args.registry}: {err.strerror or err}") from None
    return 0


def _list_registry(reg, name: str) -> int:
    """Every version, one a line; an unreadable one is listed as such (exit 1) rather than hiding the rest."""
    from pipeline.data.report import one_line  # names as written, a newline in one shown as \n
    from pipeline.registry import RegistryError

    problems = []
    try:
        reg.champion()
    except RegistryError as err:
        problems.append(str(err))
    rows = reg.table()
    if not rows:
        print(f"{name}: no versions yet (ganpipe registry promote)")
    for r in rows:
        mark = "*" if r["champion"] else " "
        if "error" in r:
            print(f"{mark} {r['version']}  unreadable")
            problems.append(r["error"])
            continue
        fid = "-" if r["fid"] is None else f"{r['fid']:.4f}"
        print(one_line(f"{mark} {r['version']}  {r['created']}  FID {fid}  {r['git_rev']}  {r['files']}"))
    for problem in problems:
        print(f"ganpipe registry: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain_flow
    from flows.server import local_prefect_api

    with local_prefect_api() as url:
        print(f"Prefect API: {url}", file=sys.stderr)
        state = retrain_flow(repo=".", registry=args.registry, margin=args.margin, force=args.force,
                             overrides=args.set or [], return_state=True)  # fmt: skip
    if not state.is_completed():
        print(f"ganpipe retrain: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=2))
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    from flows.retrain import serve_retraining
    from flows.server import configured_server

    url = configured_server()  # the environment or the active profile; one that does not answer is refused
    if not url:
        raise UserError(
            "schedules need a running Prefect server: start `prefect server start` and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (or `prefect config set PREFECT_API_URL=...`)"
        )
    os.environ["PREFECT_API_URL"] = url
    print(f"serving deployment ganpipe-retrain/{args.name} (cron {args.cron!r}); Ctrl-C or SIGTERM stops it, "
          "cancelling a run in progress and pausing the schedule until the next `ganpipe schedule`",
          file=sys.stderr)  # fmt: skip
    serve_retraining(args.cron, ".", args.registry, args.margin, args.name)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    reg = sub.add_parser("registry", help="list, show, promote or roll back model versions in registry/")
    reg.add_argument("action", choices=("list", "show", "promote", "rollback"),
                     help="list exits 1 if a version or the champion pointer is unreadable")  # fmt: skip
    reg.add_argument("version", nargs="?", help="show: a version (default: the champion)")
    reg.add_argument("--registry", default=str(layout.REGISTRY), help="registry folder")
    reg.add_argument("--workdir", default=".", help="promote: the pipeline checkout whose outputs to promote")
    reg.set_defaults(fn=_cmd_registry)

    rt = sub.add_parser("retrain", help="run the retraining flow once: retrain if inputs changed, promote if better")
    rt.add_argument("--registry", default=str(layout.REGISTRY), help="registry folder")
    rt.add_argument("--margin", type=fraction_arg, default=None,
                    help="relative FID improvement needed, 0 <= m < 1 (default: retrain.fid_margin)")  # fmt: skip
    rt.add_argument("--force", action="store_true", help="retrain even if no input changed")
    rt.add_argument("-S", "--set", action="append", help="params override for the experiment, e.g. train.steps=6000")
    rt.set_defaults(fn=_cmd_retrain)

    sc = sub.add_parser("schedule", help="serve the retraining deployment on a cron schedule (needs a Prefect server)")
    sc.add_argument("--cron", default="0 3 * * *", help="cron expression (default: every day at 03:00)")
    sc.add_argument("--name", default="nightly", help="deployment name")
    sc.add_argument("--registry", default=str(layout.REGISTRY), help="registry folder")
    sc.add_argument("--margin", type=fraction_arg, default=None, help="as retrain --margin")
    sc.set_defaults(fn=_cmd_schedule)
