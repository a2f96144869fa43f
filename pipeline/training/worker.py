"""Training in several processes, on one machine or several: `launch` starts PyTorch's own
launcher (torchrun) for this machine, and torchrun starts `main` in each process, where every
process runs the same training (see distributed.py).

What shapes the weights is in params (`train.nnodes`, `train.nproc_per_node`); how the
machines find each other is a setting of the launch (`Rendezvous`): it never changes a
weight, so it is no param (a param change would make DVC rerun the stage). The train stage
reads it from the environment (GANPIPE_RDZV_ENDPOINT, GANPIPE_RDZV_ID, GANPIPE_MAX_RESTARTS);
`ganpipe train` takes the same settings as flags.

There is no node rank: torchrun's c10d rendezvous (the one that survives a lost process)
numbers the machines itself and ignores one. Nothing depends on which machine gets rank 0:
every machine's first process writes that machine's checkpoints and outputs, and rank 0
decides the resume point for all (runner._resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pipeline import layout
from pipeline.config import TrainConfig, load_params
from pipeline.errors import UserError

ENDPOINT_ENV, ID_ENV, RESTARTS_ENV = "GANPIPE_RDZV_ENDPOINT", "GANPIPE_RDZV_ID", "GANPIPE_MAX_RESTARTS"
USER_ERROR = "ganpipe train: error: "


@dataclass(frozen=True)
class Rendezvous:
    """How this machine's torchrun meets the others'."""

    endpoint: str | None = None  # HOST:PORT of the c10d rendezvous, on any one of the machines
    run_id: str = "ganpipe"  # the same on every machine of one training run
    max_restarts: int = 0  # restarts of every process, on every machine, after one fails

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Rendezvous:
        env = os.environ if env is None else env
        restarts = env.get(RESTARTS_ENV, "0")
        if not restarts.isascii() or not restarts.isdigit():
            raise UserError(f"{RESTARTS_ENV}: a whole number of restarts (0 or more), got {restarts!r}")
        return cls(env.get(ENDPOINT_ENV) or None, env.get(ID_ENV) or "ganpipe", int(restarts))

    def env(self) -> dict[str, str]:
        """These settings as the environment variables `from_env` reads."""
        return {ENDPOINT_ENV: self.endpoint or "", ID_ENV: self.run_id, RESTARTS_ENV: str(self.max_restarts)}


def needs_launcher(cfg: TrainConfig, rdzv: Rendezvous) -> bool:
    """Whether training runs under torchrun: several processes or machines, or restarts asked for."""
    return cfg.nnodes > 1 or cfg.nproc_per_node > 1 or rdzv.max_restarts > 0


def torchrun_args(cfg: TrainConfig, rdzv: Rendezvous) -> list[str]:
    """torchrun's own flags for this machine."""
    if cfg.nnodes == 1 and rdzv.endpoint is None:
        where = ["--standalone"]
    elif rdzv.endpoint is None:
        raise UserError(f"train.nnodes is {cfg.nnodes}: the machines meet at a rendezvous endpoint; set "
                        f"{ENDPOINT_ENV}=HOST:PORT (ganpipe train --rdzv-endpoint) to one machine's address and a "
                        "free port, the same on every machine")  # fmt: skip
    else:
        host, _, port = rdzv.endpoint.rpartition(":")
        if not host or not port.isascii() or not port.isdigit():
            raise UserError(f"{ENDPOINT_ENV}: HOST:PORT, got {rdzv.endpoint!r}")
        where = [f"--nnodes={cfg.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv.endpoint}",
                 f"--rdzv-id={rdzv.run_id}"]  # fmt: skip
    return [*where, f"--nproc-per-node={cfg.nproc_per_node}", f"--max-restarts={rdzv.max_restarts}"]


def launch(params_path: str, cfg: TrainConfig, rdzv: Rendezvous, echo: Callable[[str], None] | None = None) -> None:
    """Run this machine's share of training through torchrun; every line its processes print
    goes through `echo` (default: `print` as it is when called: in the train stage that is
    Prefect's, so the first process's progress and logs reach the stage's flow run)."""
    echo = echo or print
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(cfg, rdzv),
           "-m", __name__, "--params", str(params_path)]  # fmt: skip
    user_error = None
    # PYTHONUNBUFFERED: each line as it is printed, not when a buffer fills. TORCH_DISABLE_...: by
    # default torchrun's agents keep the first round's store for every later round, so after a
    # restart the processes read the failed round's keys (a dead peer's address) or, when rank 0
    # moved to another machine, two different stores, and wait for ever; opting out gives each
    # round a fresh store hosted by its rank 0.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env) as proc:
        for line in proc.stdout:
            echo(line.rstrip("\n"))
            if user_error is None and line.startswith(USER_ERROR):
                user_error = line.strip().removeprefix(USER_ERROR)
    code = proc.returncode
    if code != 0 and user_error:  # a bad setting found by the processes: their one line, not torchrun's report
        raise UserError(user_error)
    if code != 0:
        raise RuntimeError(f"torchrun ({cfg.nnodes} machine(s) x {cfg.nproc_per_node} process(es)) failed (exit "
                           f"{code}); see the output above")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """One training process (torchrun runs this in each)."""
    from pipeline.training.runner import TrainPaths, train  # torch: not needed by the launcher

    parser = argparse.ArgumentParser(prog="python -m pipeline.training.worker")
    parser.add_argument("--params", default=str(layout.PARAMS))
    parser.add_argument("--no-logs", action="store_true", help="no DVCLive folder (machines without DVCLive)")
    args = parser.parse_args(argv)
    first_here = int(os.environ.get("LOCAL_RANK", "0")) == 0  # this machine's first process speaks for it
    fmt = "%(message)s" if first_here else f"rank {os.environ.get('RANK')}: %(message)s"
    logging.basicConfig(level=logging.INFO if first_here else logging.WARNING, stream=sys.stdout, format=fmt)
    try:
        paths = TrainPaths(live_dir=None) if args.no_logs else TrainPaths()
        train(load_params(args.params), paths, progress=False)  # no bar in a pipe: progress is logged every 30 s
    except UserError as err:
        print(f"{USER_ERROR}{err}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
