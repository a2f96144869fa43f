"""Training across machines, run on one: two torchrun "nodes" (`ganpipe train` in two folders,
each its own disk), c10d rendezvous on 127.0.0.1, gloo, one process each, both reporting to
one Prefect server. Their weights equal one process accumulating the same two shards; a
node whose process is killed recovers from the last checkpoint and ends with the same bytes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, merge, tiny_params, write_params

from pipeline.training.checkpoint import checkpoint_files
from pipeline.training.runner import TrainPaths, train

RUN = {"train": {"steps": 120, "checkpoint_every": 10, "log_every": 10, "sample_every": 60}}
TWO_NODES = merge(RUN, {"train": {"nnodes": 2}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_folder(root: Path, prepared: Path) -> Path:
    """A machine's checkout: params and the prepared data (as `dvc pull` leaves it), nothing else."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared)
    write_params(root / "params.yaml", merge(TINY, TWO_NODES))
    return root


def start_node(folder: Path, endpoint: str, run_id: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GANPIPE_THREADS": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "train", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id, *extra]
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = [p.communicate(timeout=600)[0] for p in procs]
    said = "\n=====\n".join(out[-3000:] for out in outs)
    assert [p.returncode for p in procs] == [0, 0], said
    return outs


def train_runs() -> dict:
    """Every `train` flow run on the Prefect server, by id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["stage:train"])))
    return {r.id: r for r in runs}


def log_lines(run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        records = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return [r.message for r in records]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, prepared_digits, prefect_api) -> dict:
    """One uninterrupted two-machine run: its folders, console outputs and Prefect flow runs."""
    root = tmp_path_factory.mktemp("nodes")
    folders = [node_folder(root / name, prepared_digits) for name in ("a", "b")]
    before = set(train_runs())
    endpoint = f"127.0.0.1:{free_port()}"
    outs = finish([start_node(f, endpoint, "whole") for f in folders])
    runs = [r for i, r in train_runs().items() if i not in before]
    return {"folders": folders, "outs": outs, "runs": runs}


def test_two_machines_train_as_one_process_accumulating_the_same_shards(two_nodes, prepared_digits, tmp_path):
    a, b = two_nodes["folders"]
    generator = (a / "models" / "generator.pt").read_bytes()
    assert generator == (b / "models" / "generator.pt").read_bytes()  # each machine holds the whole result
    for folder in (a, b):  # and its own checkpoints, on its own disk
        (run,) = (folder / "models" / "checkpoints").iterdir()
        assert [p.name for p in checkpoint_files(run)] == ["ckpt_0000120.pt", "ckpt_0000110.pt"]
        assert (folder / "dvclive" / "metrics.json").is_file() and (folder / "reports" / "samples.png").is_file()
    assert sum("2 processes in sync" in out for out in two_nodes["outs"]) == 1  # said once, by rank 0

    ref = TrainPaths(prepared=prepared_digits, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                     live_dir=None, samples=tmp_path / "s.png")  # fmt: skip
    train(tiny_params(**merge(RUN, {"train": {"accumulate": 2}})), ref, progress=False)
    one = torch.load(ref.generator, weights_only=True)["state_dict"]
    two = torch.load(a / "models" / "generator.pt", weights_only=True)["state_dict"]
    for name, value in one.items():
        if "running" not in name and "num_batches" not in name:  # BN statistics: rank 0's own shard under DDP
            torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)

    # each machine's train flow run on the one Prefect server holds that machine's progress lines
    assert len(two_nodes["runs"]) == 2
    for run in two_nodes["runs"]:
        assert run.state.is_completed()
        lines = log_lines(run.id)
        assert any(line.startswith("step 120/120 (100%): loss_D ") for line in lines), lines[-20:]


def test_a_killed_machine_recovers_from_the_last_checkpoint_and_ends_with_the_same_weights(
    two_nodes, prepared_digits, tmp_path
):
    import psutil

    folders = [node_folder(tmp_path / name, prepared_digits) for name in ("a", "b")]
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [start_node(f, endpoint, "killed", "--max-restarts", "1") for f in folders]
    ckpts = folders[1] / "models" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = [int(p.stem.split("_")[1]) for run in ckpts.glob("*") for p in checkpoint_files(run)]
        if steps and max(steps) >= 30:
            break
        time.sleep(0.05)
    killed_after = max(steps)
    trainer = [c for c in psutil.Process(procs[1].pid).children(recursive=True)
               if "pipeline.training.worker" in c.cmdline() and "torch.distributed.run" not in c.cmdline()]  # fmt: skip
    assert len(trainer) == 1
    trainer[0].send_signal(signal.SIGKILL)  # the training process of machine b, mid-run; its torchrun restarts it
    outs = finish(procs)

    resumed = {int(m) for out in outs for m in re.findall(r"resuming from checkpoint at step (\d+)", out)}
    assert len(resumed) == 1 and killed_after <= resumed.pop() < 120, outs[1][-3000:]
    whole = (two_nodes["folders"][0] / "models" / "generator.pt").read_bytes()
    for folder in folders:
        assert (folder / "models" / "generator.pt").read_bytes() == whole


def test_machines_must_meet_somewhere_and_torchrun_must_start_what_params_ask(tmp_path, prepared_digits):
    from pipeline.errors import UserError
    from pipeline.training.worker import Rendezvous, torchrun_args

    cfg = tiny_params(**TWO_NODES).train
    with pytest.raises(UserError, match=r"train.nnodes is 2: .*GANPIPE_RDZV_ENDPOINT=HOST:PORT"):
        torchrun_args(cfg, Rendezvous())
    with pytest.raises(UserError, match=r"GANPIPE_RDZV_ENDPOINT: HOST:PORT, got 'head'"):
        torchrun_args(cfg, Rendezvous("head"))
    with pytest.raises(UserError, match=r"GANPIPE_MAX_RESTARTS: a whole number"):
        Rendezvous.from_env({"GANPIPE_MAX_RESTARTS": "²"})
    assert torchrun_args(cfg, Rendezvous("head:29400", "nightly", 2)) == [
        "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29400", "--rdzv-id=nightly",
        "--nproc-per-node=1", "--max-restarts=2"]  # fmt: skip

    # torchrun started by hand with 2 processes where params ask for 1 x 1: refused before any step
    folder = tmp_path / "m"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "prepared").symlink_to(prepared_digits)
    write_params(folder / "params.yaml", merge(TINY, RUN))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GANPIPE_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "pipeline.training.worker"], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode != 0
    assert ("ganpipe train: error: 2 processes joined, and params ask for train.nnodes x train.nproc_per_node = "
            "1 x 1 = 1: start torchrun with --nnodes 1 --nproc-per-node 1, or change params") in res.stdout
    assert not (folder / "models").exists()

    # the stage refuses a run over machines with nowhere to meet before Prefect or torchrun starts
    write_params(folder / "params.yaml", merge(TINY, TWO_NODES))
    env.pop("GANPIPE_RDZV_ENDPOINT", None)
    res = subprocess.run([sys.executable, "-m", "flows.train"], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "ganpipe train: error: train.nnodes is 2: the machines meet at a rendezvous endpoint; set "
        "GANPIPE_RDZV_ENDPOINT=HOST:PORT (ganpipe train --rdzv-endpoint) to one machine's address and a free port, "
        "the same on every machine"]  # fmt: skip
