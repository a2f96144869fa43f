"""The one training runner: every objective (GAN, CycleGAN, pix2pix, ...) trains through `train`.

The runner owns what every run needs and no objective repeats: device, precision and seeds,
DDP processes, fingerprinted checkpoints (a resumed run continues exactly, its curves
rebuilt from the checkpoint), DVCLive curves and sample grids, the divergence check, the
progress bar and the atomic final save. The objective (pipeline/training/objectives/) owns
the maths: its networks, optimisers, one step, its checkpoint state and its sample panel.
Every RNG an objective draws from is seeded from params and saved in its checkpoint state.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel
from tqdm import tqdm

from pipeline import layout
from pipeline.config import Params, TrainConfig, logging_only
from pipeline.errors import UserError
from pipeline.grid import figure_png
from pipeline.metrics.probe import FidProbe
from pipeline.models.artifact import save_model
from pipeline.provenance import source_hash
from pipeline.runtime import resolve_device, resolve_precision, seed_everything, set_threads
from pipeline.training.checkpoint import load_latest, prune_runs, run_folder, save_checkpoint
from pipeline.training.distributed import (
    World,
    agree_on_checkpoint,
    checksum,
    gather,
    init_world,
    share_buffers,
    shutdown,
)
from pipeline.training.live import open_live, snapshot
from pipeline.training.objectives import Objective, make_objective

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0  # how often training progress goes to the log


class TrainingDiverged(UserError, RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainPaths:
    prepared: Path = layout.PREPARED
    checkpoints: Path = layout.CHECKPOINTS  # the root: each run's checkpoints go to <root>/<fingerprint>/
    generator: Path = layout.GENERATOR
    live_dir: Path | None = layout.DVCLIVE  # None: no DVCLive logs (benchmarks, machines without DVCLive)
    samples: Path = layout.SAMPLES
    evaluator: Path = layout.EVALUATOR  # read only with train.fid_every (FID while training)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int
    generator: Path
    seconds: float
    world_size: int = 1
    checkpoints: Path | None = None  # this run's checkpoint folder


def fingerprint(params: Params, prepared: Path, length_matters: bool = False, device_type: str = "cpu",
                world_size: int = 1) -> str:  # fmt: skip
    """Hash of everything that shapes the weights except the run length (unless the objective's
    schedule depends on it) and the keys config.py marks logging-only (logging cadence, device,
    compilation): params, the prepared data, the training code
    (this module's import closure), the kind of device the random streams live on (a CUDA
    generator's state cannot continue a CPU one's) and the number of processes (each holds its
    own shards' random streams)."""
    length = frozenset() if length_matters else frozenset({"steps"})
    payload = {
        "code": source_hash(__name__),  # the runner and every module it imports
        "seed": params.seed,
        "model": _shaping(params.model),
        "augment": _shaping(params.augment),
        "train": _shaping(params.train, length),
        "data": hashlib.sha256((prepared / "manifest.json").read_bytes()).hexdigest(),
        "rng_device": device_type,
        "world_size": world_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _shaping(section: BaseModel, leave_out: frozenset[str] = frozenset()) -> dict:
    """A params section's keys that shape the weights: all but its logging-only ones (config.LOGGING_ONLY)
    and `leave_out`."""
    dropped = logging_only(type(section)) | leave_out
    return {k: v for k, v in section.model_dump(mode="json").items() if k not in dropped}


def _device_and_world(cfg: TrainConfig) -> tuple[torch.device, World]:
    device = resolve_device(cfg.device)
    world = init_world(device.type)
    asked = cfg.nnodes * cfg.nproc_per_node
    if world.size != asked:  # torchrun started by hand with other counts: the batch would split otherwise
        shutdown(world)
        raise UserError(f"{world.size} processes joined, and params ask for train.nnodes x train.nproc_per_node = "
                        f"{cfg.nnodes} x {cfg.nproc_per_node} = {asked}: start torchrun with --nnodes "
                        f"{cfg.nnodes} --nproc-per-node {cfg.nproc_per_node}, or change params")  # fmt: skip
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device, world


def _resume(objective: Objective, paths: TrainPaths, fp: str, steps: int, world: World) -> tuple[int, dict | None]:
    """Load the newest matching checkpoint into the objective: the step it was taken at (0: none)
    and the DVCLive folder it holds (None: none, start the logs afresh).

    Each machine's first process reads that machine's checkpoint folder (its own disk, or
    storage they share); rank 0 decides from what they found, and every process loads the same
    state, sent by one that holds it."""
    folder = run_folder(paths.checkpoints, fp)
    state = None
    if world.first_on_machine:
        prune_runs(paths.checkpoints, fp)
        state = load_latest(folder, fp, max_step=steps)
        if state is not None and paths.live_dir is not None and "live" not in state:
            log.warning("checkpoint at step %d holds no training logs (written without DVCLive); training from "
                        "scratch to make them", state["step"])  # fmt: skip
            state = None
    state = agree_on_checkpoint(state, world)
    if state is None:
        return 0, None
    objective.load_state_dict(state["objective"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming from checkpoint at step %d (%s)", state["step"], folder)
    return state["step"], state.get("live")


def _checkpoint(objective: Objective, paths: TrainPaths, fp: str, step: int, world: World, live) -> None:
    state = objective.state_dict()  # on every process: it may gather random states across them
    if world.first_on_machine:  # each machine keeps its own: whichever gets rank 0 after a restart can resume
        state = {"fingerprint": fp, "step": step, "objective": state, "torch_rng": torch.get_rng_state()}
        if live is not None:  # the logs so far, summary included: a resumed run rebuilds them from here
            live.make_summary()
            state["live"] = snapshot(paths.live_dir)
        save_checkpoint(run_folder(paths.checkpoints, fp), step, state)


def _check_in_sync(objective: Objective, world: World) -> None:
    sums = gather(sum(checksum(m) for m in objective.trained_modules()), world)
    if len(set(sums)) != 1:
        raise RuntimeError(f"processes hold different weights after training (checksums {sums}); DDP lost sync")
    if world.enabled and world.is_main:
        print(f"{world.size} processes in sync: weight checksum {sums[0]:.6f}")


def _finite_losses(objective: Objective, done: int, live, folder: Path) -> tuple[float, float]:
    """The objective's losses (a host sync); TrainingDiverged, the logs closed, if one is NaN or infinite."""
    loss_d, loss_g = objective.losses()
    if not (np.isfinite(loss_d) and np.isfinite(loss_g)):
        if live is not None:
            live.end()
        raise TrainingDiverged(
            f"loss became non-finite at step {done} (loss_D={loss_d}, loss_G={loss_g}); "
            f"the last good checkpoint in {folder} is kept. Lower train.lr_* and rerun."
        )
    return loss_d, loss_g


def _log_samples(objective: Objective, done: int, live, bar: tqdm) -> None:
    """The objective's sample panel and its scalars (diversity) into DVCLive; its warnings to the log."""
    image, scalars, warnings = objective.samples(done)
    for msg in warnings:
        log.warning(msg)
        bar.write("WARNING " + msg)
    live.step = done
    for name, value in scalars.items():
        live.log_metric(name, value)
    live.log_image(f"samples/{done:07d}.png", image)


def _finish(objective: Objective, paths: TrainPaths, steps: int, world: World, live) -> None:
    """After the last step: check the processes agree, close the logs, save the EMA model and the
    samples (each machine's first process), and leave the process group together."""
    _check_in_sync(objective, world)
    if live is not None:
        if (walk := objective.walk_figure(steps)) is not None:
            live.log_image("walk.png", Image.open(io.BytesIO(figure_png(walk))))
        live.end()
    if world.first_on_machine:
        spec, weights = objective.model_artifact()
        save_model(paths.generator, spec, weights, steps)
        objective.save_samples(paths.samples)
    if world.enabled:
        torch.distributed.barrier()
    shutdown(world)


def train(params: Params, paths: TrainPaths = TrainPaths(), progress: bool = True) -> TrainResult:
    """Train the objective `params` describes for `params.train.steps` steps, resuming from a
    matching checkpoint; write the EMA model to `paths.generator`.

    Runs alone, or as one of `train.nnodes` x `train.nproc_per_node` processes under torchrun
    (DDP). Every machine's first process writes that machine's checkpoints, logs and outputs
    (the weights are the same in every process), so none depends on which one is rank 0.
    """
    cfg = params.train
    set_threads()
    seed_everything(params.seed)
    device, world = _device_and_world(cfg)
    precision = resolve_precision(cfg.precision, device)
    objective = make_objective(params, paths.prepared, device, precision, world)
    fp = fingerprint(params, paths.prepared, objective.length_matters, device.type, world.size)
    start, logs = _resume(objective, paths, fp, cfg.steps, world)

    live = open_live(paths.live_dir, logs) if world.first_on_machine and paths.live_dir is not None else None
    probe = (FidProbe(paths.evaluator, paths.prepared, params.seed)
             if cfg.fid_every and live is not None and params.task == "generate" else None)  # fmt: skip
    t0 = time.perf_counter()
    t_window, images_window = time.perf_counter(), 0
    t_said = t0
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step",
               disable=not (progress and world.first_on_machine), dynamic_ncols=True)  # fmt: skip
    for step in range(start, cfg.steps):
        done = step + 1
        log_now = done % cfg.log_every == 0 or done == cfg.steps
        checkpoint_now = done % cfg.checkpoint_every == 0 or done == cfg.steps

        objective.step(step, log_now)
        if checkpoint_now or done % cfg.sample_every == 0 or (cfg.fid_every and done % cfg.fid_every == 0):
            share_buffers(objective.networks(), world)  # every machine samples and saves the same networks

        images_window += cfg.batch_size
        bar.update(1)
        if log_now or checkpoint_now:  # the only host syncs: never checkpoint or log a diverged model
            loss_d, loss_g = _finite_losses(objective, done, live, run_folder(paths.checkpoints, fp))
        if log_now and live is not None:
            now = time.perf_counter()
            live.step = done
            scalars = {**objective.scalars(loss_d, loss_g),
                       "train/images_per_s": images_window / max(now - t_window, 1e-9)}  # fmt: skip
            for name, value in scalars.items():
                live.log_metric(name, value)
            t_window, images_window = now, 0
            bar.set_postfix(loss_D=f"{loss_d:.3f}", loss_G=f"{loss_g:.3f}")
            if now - t_said >= PROGRESS_EVERY_S or done == cfg.steps:  # for logs (Prefect), not the terminal
                t_said = now
                eta = (now - t0) / (done - start) * (cfg.steps - done)
                rate = scalars["train/images_per_s"]
                log.info(f"step {done}/{cfg.steps} ({100 * done // cfg.steps}%): loss_D {loss_d:.3f}, "
                         f"loss_G {loss_g:.3f}, {rate:.0f} img/s, ETA {eta // 60:.0f}m{eta % 60:02.0f}s")  # fmt: skip
        if (done % cfg.sample_every == 0 or done == cfg.steps) and live is not None:
            _log_samples(objective, done, live, bar)
        if probe is not None and (done % cfg.fid_every == 0 or done == cfg.steps):
            live.step = done
            for name, value in probe(*objective.model_artifact()).items():
                live.log_metric(name, value)
        if checkpoint_now:
            _checkpoint(objective, paths, fp, done, world, live)
    bar.close()

    _finish(objective, paths, cfg.steps, world, live)
    return TrainResult(steps=cfg.steps, resumed_from=start, generator=paths.generator,
                       seconds=time.perf_counter() - t0, world_size=world.size,
                       checkpoints=run_folder(paths.checkpoints, fp))  # fmt: skip
