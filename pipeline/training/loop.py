"""The GAN training loop: one function, batch to optimiser step, top to bottom.

Around it, small named helpers: EMA (ema.py), checkpoints (checkpoint.py), logging to
DVCLive and sample grids (here). Everything that shapes the result is seeded from
params, and every RNG the loop draws from is saved in the checkpoint, so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import layout
from pipeline.artifacts import atomic_path
from pipeline.config import Params
from pipeline.data.augment import DiffAugment
from pipeline.data.dataset import BatchSampler, load_split
from pipeline.errors import MissingInput, UserError
from pipeline.grid import make_grid, save_grid
from pipeline.losses import LOSSES
from pipeline.models import build_discriminator, build_generator
from pipeline.runtime import autocast, resolve_device, seed_everything, set_threads
from pipeline.training.checkpoint import load_latest, save_checkpoint
from pipeline.training.ema import make_ema, update_ema
from pipeline.training.live import has_logs, open_live

log = logging.getLogger(__name__)
NUM_FIXED_SAMPLES = 64


class TrainingDiverged(UserError, RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainPaths:
    prepared: Path = layout.PREPARED
    checkpoints: Path = layout.CHECKPOINTS
    generator: Path = layout.GENERATOR
    live_dir: Path = layout.DVCLIVE
    samples: Path = layout.SAMPLES


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int
    generator: Path
    seconds: float


# Source files whose code shapes the weights: a checkpoint made by other code is not resumed.
_TRAINING_CODE = ("training/loop.py", "training/ema.py", "models", "losses.py", "data/augment.py", "data/dataset.py")


def code_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in _TRAINING_CODE:
        path = root / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def fingerprint(params: Params, prepared: Path) -> str:
    """Hash of everything that shapes the weights except the run length (and logging cadence):
    params, the prepared data and the training code."""
    volatile = {"steps", "sample_every", "log_every", "checkpoint_every", "device"}
    payload = {
        "code": code_hash(),
        "seed": params.seed,
        "model": params.model.model_dump(mode="json"),
        "augment": params.augment.model_dump(mode="json"),
        "train": {k: v for k, v in params.train.model_dump(mode="json").items() if k not in volatile},
        "data": hashlib.sha256((prepared / "manifest.json").read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def generator_spec(params: Params, image_size: int, channels: int, classes: list[str]) -> dict:
    """What it takes to rebuild G from generator.pt without params.yaml."""
    return {
        "model": params.model.model_dump(mode="json"),
        "image_size": image_size,
        "channels": channels,
        "num_classes": len(classes) if params.model.conditional else 0,
        "class_names": classes if params.model.conditional else [],
    }


def fixed_inputs(latent_dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same noise (and one class per row) for every sample grid of a run."""
    g = torch.Generator().manual_seed(seed + 12345)
    z = torch.randn(NUM_FIXED_SAMPLES, latent_dim, generator=g)
    labels = torch.arange(NUM_FIXED_SAMPLES) // 8 % num_classes if num_classes else None
    return z, labels


@torch.no_grad()
def sample(g: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None, device: torch.device) -> np.ndarray:
    g_was_training = g.training
    g.eval()
    out = g(z.to(device), None if labels is None else labels.to(device)).float().cpu().numpy()
    g.train(g_was_training)
    return out


def train(params: Params, paths: TrainPaths = TrainPaths(), progress: bool = True) -> TrainResult:
    """Train G and D for `params.train.steps` steps, resuming from a matching checkpoint."""
    cfg, mcfg = params.train, params.model
    set_threads()
    seed_everything(params.seed)
    device = resolve_device(cfg.device)
    data = load_split(paths.prepared, "train")
    _, channels, image_size, _ = data.images.shape
    num_classes = data.num_classes if mcfg.conditional else 0

    G = build_generator(mcfg, image_size, channels, num_classes).to(device)
    D = build_discriminator(mcfg, image_size, channels, num_classes).to(device)
    if device.type == "cuda":
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = make_ema(G)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    augment = DiffAugment(params.augment.diffaugment, seed=params.seed)
    batches = BatchSampler(data, cfg.batch_size, seed=params.seed + 1, device=device)
    noise = torch.Generator().manual_seed(params.seed + 2)  # z and fake labels, on CPU for portability
    z_fixed, y_fixed = fixed_inputs(mcfg.latent_dim, num_classes, params.seed)
    fp = fingerprint(params, paths.prepared)

    start = 0
    state = load_latest(paths.checkpoints, fp, max_step=cfg.steps)
    if state is not None and state["step"] == cfg.steps and not has_logs(paths.live_dir):
        log.warning("training logs in %s are missing; retraining from scratch to rebuild them", paths.live_dir)
        state = None
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        batches.generator.set_state(state["rng"]["batches"])
        noise.set_state(state["rng"]["noise"])
        augment.generator.set_state(state["rng"]["augment"])
        torch.set_rng_state(state["rng"]["torch"])
        start = state["step"]
        log.info("resuming from checkpoint at step %d", start)

    def checkpoint(step: int) -> None:
        save_checkpoint(
            paths.checkpoints,
            step,
            {
                "fingerprint": fp,
                "step": step,
                "G": G.state_dict(),
                "D": D.state_dict(),
                "G_ema": G_ema.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "rng": {
                    "batches": batches.generator.get_state(),
                    "noise": noise.get_state(),
                    "augment": augment.generator.get_state(),
                    "torch": torch.get_rng_state(),
                },
            },
        )

    live = open_live(paths.live_dir, start)
    t0 = time.perf_counter()
    t_window, images_window = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    G.train()
    D.train()
    for step in range(start, cfg.steps):
        real, y_real = batches.next()
        z = torch.randn(cfg.batch_size, mcfg.latent_dim, generator=noise).to(device)
        y_fake = torch.randint(num_classes, (cfg.batch_size,), generator=noise).to(device) if num_classes else None
        y_real = y_real if num_classes else None

        # D step: push D(x) up and D(G(z)) down, both seen through the same augmentation
        with autocast(device):
            fake = G(z, y_fake)
            real_logits = D(augment(real), y_real)
            fake_logits = D(augment(fake.detach()), y_fake)
            loss_d = d_loss_fn(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # G step: make D call the (same) fakes real
        with autocast(device):
            loss_g = g_loss_fn(D(augment(fake), y_fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        update_ema(G_ema, G, step, cfg.ema_decay)

        done = step + 1
        images_window += cfg.batch_size
        bar.update(1)
        log_now = done % cfg.log_every == 0 or done == cfg.steps
        checkpoint_now = done % cfg.checkpoint_every == 0 or done == cfg.steps
        if log_now or checkpoint_now:  # the only host syncs: never checkpoint or log a diverged model
            ld, lg = loss_d.item(), loss_g.item()
            if not (np.isfinite(ld) and np.isfinite(lg)):
                live.end()
                raise TrainingDiverged(
                    f"loss became non-finite at step {done} (loss_D={ld}, loss_G={lg}); "
                    f"the last good checkpoint in {paths.checkpoints} is kept. Lower train.lr_* and rerun."
                )
        if log_now:
            now = time.perf_counter()
            live.step = done
            live.log_metric("train/loss_D", ld)
            live.log_metric("train/loss_G", lg)
            live.log_metric("train/D_real", torch.sigmoid(real_logits.detach()).mean().item())
            live.log_metric("train/D_fake", torch.sigmoid(fake_logits.detach()).mean().item())
            live.log_metric("train/images_per_s", images_window / max(now - t_window, 1e-9))
            t_window, images_window = now, 0
            bar.set_postfix(loss_D=f"{ld:.3f}", loss_G=f"{lg:.3f}")
        if done % cfg.sample_every == 0 or done == cfg.steps:
            grid = make_grid(sample(G_ema, z_fixed, y_fixed, device), nrow=8)
            live.step = done
            live.log_image(f"samples/{done:07d}.png", grid[..., 0] if grid.shape[-1] == 1 else grid)
        if checkpoint_now:
            checkpoint(done)
    bar.close()
    live.end()

    spec = generator_spec(params, image_size, channels, data.classes)
    with atomic_path(paths.generator) as tmp:
        torch.save({"spec": spec, "state_dict": G_ema.cpu().state_dict(), "steps": cfg.steps}, tmp)
    save_grid(sample(G_ema, z_fixed, y_fixed, torch.device("cpu")), paths.samples, nrow=8, scale=3)
    return TrainResult(steps=cfg.steps, resumed_from=start, generator=paths.generator, seconds=time.perf_counter() - t0)


def load_generator(path: Path | str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the EMA generator saved by `train` (eval mode) and return it with its spec."""
    from pipeline.config import ModelConfig

    if not Path(path).is_file():
        raise MissingInput(f"{path}: trained generator missing; run the train stage first")
    blob = torch.load(path, map_location=device, weights_only=True)
    spec = blob["spec"]
    g = build_generator(ModelConfig(**spec["model"]), spec["image_size"], spec["channels"], spec["num_classes"])
    g.load_state_dict(blob["state_dict"])
    return g.to(device).eval(), spec
