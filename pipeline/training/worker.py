"""Training in N processes: `launch` starts torchrun on this machine, and torchrun starts this
module in each process, where every process runs the same training (see distributed.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from pipeline import layout
from pipeline.config import load_params
from pipeline.errors import UserError
from pipeline.training.runner import train


def launch(params_path: str, nproc_per_node: int) -> None:
    """Run training in `nproc_per_node` local processes through torchrun (single machine)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
           "-m", __name__, "--params", str(params_path)]  # fmt: skip
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise RuntimeError(f"torchrun with {nproc_per_node} processes failed (exit {code}); see the output above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.worker")
    parser.add_argument("--params", default=str(layout.PARAMS))
    args = parser.parse_args(argv)
    try:
        train(load_params(args.params), progress=int(os.environ.get("RANK", "0")) == 0)
    except UserError as err:
        print(f"ganpipe train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
