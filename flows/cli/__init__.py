"""`ganpipe`: run the pipeline or one stage, and sample from an exported model.

Imports are deferred to each command: `ganpipe generate` needs only onnxruntime, NumPy
and Pillow, never torch or Prefect.

One module per command group, each with its options beside its handler (`add_parser(sub)`):
`runs` (repro, exp, push, bench, the stages), `augment` (preview-augment), `sample` (generate,
interpolate), `translate`, `registry` (registry, retrain, schedule) and `deploy` (serve,
export-triton); `common` holds the argument types and the help formatter they share.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli import augment, deploy, registry, runs, sample, translate
from flows.cli.common import SEED_MAX, fraction_arg, int_arg, seconds_arg, with_defaults
from flows.cli.runs import STAGES, _experiment_exists, merge_overlay, overrides, set_params, validate_set_params
from flows.cli.sample import psi_arg
from pipeline.errors import UserError

__all__ = ["SEED_MAX", "STAGES", "_experiment_exists", "build_parser", "fraction_arg", "int_arg", "main",
           "merge_overlay", "overrides", "psi_arg", "seconds_arg", "set_params", "validate_set_params"]  # fmt: skip

GROUPS = (runs, augment, sample, translate, registry, deploy)  # in the order `ganpipe --help` lists them


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ganpipe")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # every subcommand's help shows its defaults
    sub = parser.add_subparsers(dest="command", required=True, parser_class=with_defaults)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.dvc_args = extra  # repro / exp: everything we do not know goes to dvc
    try:
        return args.fn(args)
    except UserError as err:
        print(f"ganpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
