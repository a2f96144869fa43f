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
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import layout
from pipeline.artifacts import save_torch
from pipeline.config import Params
from pipeline.data.augment import AdaptiveProbability, DiffAugment, random_hflip
from pipeline.data.dataset import BatchSampler, load_split, stable_subset, to_float
from pipeline.errors import MissingInput, UserError
from pipeline.grid import make_grid, save_grid
from pipeline.losses import LOSSES, gradient_penalty, r1_penalty
from pipeline.models import build_discriminator, build_generator
from pipeline.runtime import autocast, resolve_device, resolve_precision, seed_everything, set_threads
from pipeline.training.checkpoint import load_latest, save_checkpoint
from pipeline.training.distributed import checksum, gather, init_world, mean, no_sync, shutdown, wrap
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
    world_size: int = 1


# Source files whose code shapes the weights: a checkpoint made by other code is not resumed.
_TRAINING_CODE = ("training", "models", "losses.py", "data/augment.py", "data/dataset.py")


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
    volatile = {"steps", "sample_every", "log_every", "checkpoint_every", "device", "compile", "collapse_threshold"}
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
    """The same noise for every sample grid of a run; conditional models get one class per row."""
    g = torch.Generator().manual_seed(seed + 12345)
    if num_classes:
        labels = torch.arange(min(num_classes, 16)).repeat_interleave(8)
        return torch.randn(len(labels), latent_dim, generator=g), labels
    return torch.randn(NUM_FIXED_SAMPLES, latent_dim, generator=g), None


@torch.no_grad()
def sample(g: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None, device: torch.device) -> np.ndarray:
    g_was_training = g.training
    g.eval()
    out = g(z.to(device), None if labels is None else labels.to(device)).float().cpu().numpy()
    g.train(g_was_training)
    return out


def diversity(images: np.ndarray | torch.Tensor) -> float:
    """Mean pairwise L2 distance between images: near 0 when G has collapsed to one output."""
    x = torch.as_tensor(images).float().flatten(1)
    return float(torch.pdist(x).mean())


def grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def train(params: Params, paths: TrainPaths = TrainPaths(), progress: bool = True) -> TrainResult:
    """Train G and D for `params.train.steps` steps, resuming from a matching checkpoint.

    Runs alone, or as one of `train.nproc_per_node` processes under torchrun (DDP).
    """
    cfg, mcfg = params.train, params.model
    set_threads()
    seed_everything(params.seed)
    device = resolve_device(cfg.device)
    world = init_world(device.type)
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(cfg.precision, device)
    data = stable_subset(paths.prepared, "train", load_split(paths.prepared, "train"), cfg.data_fraction)
    _, channels, image_size, _ = data.images.shape
    num_classes = data.num_classes if mcfg.conditional else 0

    G = build_generator(mcfg, image_size, channels, num_classes).to(device)
    D = build_discriminator(mcfg, image_size, channels, num_classes).to(device)
    if device.type == "cuda":
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = make_ema(G)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    acgan = bool(num_classes) and mcfg.conditioning == "acgan"
    acfg = params.augment
    augment = DiffAugment(acfg.diffaugment)
    ada = AdaptiveProbability(acfg.ada_target, acfg.ada_interval, acfg.ada_kimg, cfg.batch_size) if acfg.ada else None

    # The total batch is split into shards: one per process and micro-batch. Every process
    # draws the same global indices and noise; shard s always gets slice s and RNG s.
    shards = world.size * cfg.accumulate
    micro = cfg.batch_size // shards
    mine = [world.rank * cfg.accumulate + i for i in range(cfg.accumulate)]
    shard_rng = {s: torch.Generator().manual_seed(params.seed * 1000 + 777 + s) for s in range(shards)}
    batches = BatchSampler(data, cfg.batch_size, seed=params.seed + 1, device=device)
    noise = torch.Generator().manual_seed(params.seed + 2)  # z and fake labels, on CPU for portability
    z_fixed, y_fixed = fixed_inputs(mcfg.latent_dim, num_classes, params.seed)
    fp = fingerprint(params, paths.prepared)

    start = 0
    state = load_latest(paths.checkpoints, fp, max_step=cfg.steps, remove_stale=world.is_main)
    if state is not None and state["step"] == cfg.steps and not has_logs(paths.live_dir):
        log.warning("training logs in %s are missing; retraining from scratch to rebuild them", paths.live_dir)
        state = None
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scaler.load_state_dict(state["scaler"])
        batches.generator.set_state(state["rng"]["batches"])
        noise.set_state(state["rng"]["noise"])
        for s, st in enumerate(state["rng"]["shards"]):
            shard_rng[s].set_state(st)
        if ada is not None:
            ada.load_state_dict(state["ada"])
        torch.set_rng_state(state["rng"]["torch"])
        start = state["step"]
        log.info("resuming from checkpoint at step %d", start)

    # DDP wrappers all-reduce gradients; the plain modules serve penalties, sampling and saving.
    G_train, D_train = wrap(G, world, device, cfg.sync_batchnorm), wrap(D, world, device, cfg.sync_batchnorm)
    if cfg.compile:
        G_train, D_train = torch.compile(G_train), torch.compile(D_train)
    # Alone with one micro-batch, the fakes of the last D step are reused for the G step (one
    # G forward saved). With shards, each G step regenerates them under DDP's sync rules;
    # the values are the same, since only D changed in between.
    reuse_fakes = shards == 1

    def checkpoint(step: int) -> None:
        shard_states = [st for rank_states in gather({s: shard_rng[s].get_state() for s in mine}, world)
                        for st in rank_states.values()]  # fmt: skip
        if not world.is_main:
            return
        save_checkpoint(paths.checkpoints, step, {
            "fingerprint": fp, "step": step,
            "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"batches": batches.generator.get_state(), "noise": noise.get_state(),
                    "shards": shard_states, "torch": torch.get_rng_state()},
            **({"ada": ada.state_dict()} if ada is not None else {}),
        })  # fmt: skip

    def draw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        idx = batches.draw()
        z = torch.randn(cfg.batch_size, mcfg.latent_dim, generator=noise).to(device)
        y = torch.randint(num_classes, (cfg.batch_size,), generator=noise).to(device) if num_classes else None
        return idx, z, y

    def part(t: torch.Tensor | None, s: int) -> torch.Tensor | None:
        return None if t is None else t[s * micro : (s + 1) * micro]

    def d_loss_on(real, y_real, fake, y_fake, rng, step):
        """D's objective on one shard: adversarial + class + penalty terms."""
        real_aug, fake_aug = augment(real, rng), augment(fake, rng)
        with autocast(device, precision):
            real_logits, real_cls = D_train(real_aug, y_real)
            fake_logits, fake_cls = D_train(fake_aug, y_fake)
        loss = d_loss_fn(real_logits.float(), fake_logits.float())
        if acgan:
            loss = loss + cfg.acgan_weight * (F.cross_entropy(real_cls.float(), y_real)
                                              + F.cross_entropy(fake_cls.float(), y_fake))  # fmt: skip
        if cfg.loss == "wgan-gp" and cfg.gp_weight:
            loss = loss + cfg.gp_weight * gradient_penalty(D, real_aug, fake_aug, y_real if num_classes else None, rng)
        if cfg.r1_gamma and step % cfg.r1_every == 0:  # lazy R1, scaled up by its interval
            loss = loss + cfg.r1_gamma / 2 * cfg.r1_every * r1_penalty(D, real_aug, y_real if num_classes else None)
        return loss, real_logits, fake_logits

    def optimiser_step(opt: torch.optim.Optimizer) -> None:
        scaler.step(opt)
        scaler.update()

    live = open_live(paths.live_dir, start) if world.is_main else None
    real_diversity = diversity(to_float(data.images[: len(z_fixed)]))
    t0 = time.perf_counter()
    t_window, images_window = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step",
               disable=not (progress and world.is_main), dynamic_ncols=True)  # fmt: skip
    G.train()
    D.train()
    for step in range(start, cfg.steps):
        done = step + 1
        log_now = done % cfg.log_every == 0 or done == cfg.steps
        checkpoint_now = done % cfg.checkpoint_every == 0 or done == cfg.steps

        # D: push D(x) up and D(G(z)) down, everything D sees passing through the same augmentation
        if ada is not None:
            augment.p = ada.p
        for _ in range(cfg.n_critic):
            idx, z, y_fake = draw()
            opt_d.zero_grad(set_to_none=True)
            loss_d_sum = torch.zeros((), device=device)
            for k, s in enumerate(mine):
                real, y_real = batches.take(part(idx, s))
                if acfg.hflip:
                    real = random_hflip(real, shard_rng[s])
                with autocast(device, precision):
                    if reuse_fakes:
                        fake = G_train(part(z, s), part(y_fake, s))
                    else:
                        with torch.no_grad():
                            fake = G(part(z, s), part(y_fake, s))
                with no_sync(D_train, sync=k == len(mine) - 1):
                    loss_d, real_logits, fake_logits = d_loss_on(
                        real, y_real if num_classes else None, fake.detach(), part(y_fake, s), shard_rng[s], step
                    )
                    scaler.scale(loss_d / cfg.accumulate).backward()
                loss_d_sum += loss_d.detach() / cfg.accumulate
                if ada is not None:
                    ada.observe(real_logits)
            grad_d = grad_norm(D) if log_now else 0.0
            optimiser_step(opt_d)

        # G: make D call the fakes real (D frozen: its gradients are not needed here)
        D.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        loss_g_sum = torch.zeros((), device=device)
        for k, s in enumerate(mine):
            with no_sync(G_train, sync=k == len(mine) - 1):
                with autocast(device, precision):
                    fake_g = fake if reuse_fakes else G_train(part(z, s), part(y_fake, s))
                    logits, cls = D(augment(fake_g, shard_rng[s]), part(y_fake, s))
                loss_g = g_loss_fn(logits.float())
                if acgan:
                    loss_g = loss_g + cfg.acgan_weight * F.cross_entropy(cls.float(), part(y_fake, s))
                scaler.scale(loss_g / cfg.accumulate).backward()
            loss_g_sum += loss_g.detach() / cfg.accumulate
        grad_g = grad_norm(G) if log_now else 0.0
        optimiser_step(opt_g)
        D.requires_grad_(True)
        update_ema(G_ema, G, step, cfg.ema_decay)
        if ada is not None:
            ada.maybe_update(done, lambda t: mean(t.to(device), world).cpu())

        images_window += cfg.batch_size
        bar.update(1)
        if log_now or checkpoint_now:  # the only host syncs: never checkpoint or log a diverged model
            ld, lg = float(mean(loss_d_sum, world)), float(mean(loss_g_sum, world))
            if not (np.isfinite(ld) and np.isfinite(lg)):
                if live is not None:
                    live.end()
                raise TrainingDiverged(
                    f"loss became non-finite at step {done} (loss_D={ld}, loss_G={lg}); "
                    f"the last good checkpoint in {paths.checkpoints} is kept. Lower train.lr_* and rerun."
                )
        if log_now and live is not None:
            now = time.perf_counter()
            live.step = done
            live.log_metric("train/loss_D", ld)
            live.log_metric("train/loss_G", lg)
            # D(x), D(G(z)): probabilities for the non-saturating loss, raw scores for the others
            to_score = torch.sigmoid if cfg.loss == "nonsaturating" else (lambda t: t)
            live.log_metric("train/D_real", float(to_score(real_logits.detach().float()).mean()))
            live.log_metric("train/D_fake", float(to_score(fake_logits.detach().float()).mean()))
            live.log_metric("train/grad_norm_D", grad_d)
            live.log_metric("train/grad_norm_G", grad_g)
            live.log_metric("train/lr_D", opt_d.param_groups[0]["lr"])
            live.log_metric("train/lr_G", opt_g.param_groups[0]["lr"])
            live.log_metric("train/images_per_s", images_window / max(now - t_window, 1e-9))
            if ada is not None:
                live.log_metric("train/augment_p", ada.p)
                live.log_metric("train/ada_rt", ada.last_rt)
            t_window, images_window = now, 0
            bar.set_postfix(loss_D=f"{ld:.3f}", loss_G=f"{lg:.3f}")
        if (done % cfg.sample_every == 0 or done == cfg.steps) and live is not None:
            samples = sample(G_ema, z_fixed, y_fixed, device)
            ratio = diversity(samples) / max(real_diversity, 1e-12)
            if ratio < cfg.collapse_threshold:
                msg = (f"step {done}: possible mode collapse: fixed-noise samples are {ratio:.2f}x as diverse as "
                       f"real images (threshold train.collapse_threshold={cfg.collapse_threshold})")  # fmt: skip
                log.warning(msg)
                bar.write("WARNING " + msg)
            live.step = done
            live.log_metric("train/sample_diversity", ratio)
            grid = make_grid(samples, nrow=8)
            live.log_image(f"samples/{done:07d}.png", grid[..., 0] if grid.shape[-1] == 1 else grid)
        if checkpoint_now:
            checkpoint(done)
    bar.close()

    sums = gather(checksum(G) + checksum(D), world)
    if len(set(sums)) != 1:
        raise RuntimeError(f"processes hold different weights after training (checksums {sums}); DDP lost sync")
    if world.enabled and world.is_main:
        print(f"{world.size} processes in sync: weight checksum {sums[0]:.6f}")
    if live is not None:
        live.end()
    if world.is_main:
        spec = generator_spec(params, image_size, channels, data.classes)
        save_torch(paths.generator, {"spec": spec, "state_dict": G_ema.cpu().state_dict(), "steps": cfg.steps})
        grid_g = G_ema.to("cpu")
        save_grid(sample(grid_g, z_fixed, y_fixed, torch.device("cpu")), paths.samples, nrow=8, scale=3)
    if world.enabled:
        torch.distributed.barrier()
    shutdown(world)
    return TrainResult(steps=cfg.steps, resumed_from=start, generator=paths.generator,
                       seconds=time.perf_counter() - t0, world_size=world.size)  # fmt: skip


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
