"""Image generation: an unconditional or class-conditional GAN.

G and D come from the architecture registry; the adversarial loss is any of
pipeline.losses (non-saturating, hinge, least squares, WGAN with gradient penalty), with
lazy R1, ACGAN or projection conditioning, DiffAugment on everything D sees (its
probability steered by ADA if asked), TTUR learning rates and n_critic D steps per G step.

The total batch is split into shards, one per process and micro-batch: every process draws
the same global batch indices and noise, and shard s always gets slice s and random
generator s, so the maths do not depend on how the work is split.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import latents
from pipeline.config import Params
from pipeline.dataset import BatchSampler, load_split, stable_subset, to_float
from pipeline.grid import labelled_figure, make_grid, save_grid
from pipeline.losses import LOSSES, gradient_penalty, r1_penalty
from pipeline.models import ClassesFromNoise, build_discriminator, build_generator, classes_of
from pipeline.models.artifact import generator_spec
from pipeline.runtime import adam, autocast, seeded_generator
from pipeline.training.augment import AdaptiveProbability, DiffAugment, random_hflip
from pipeline.training.distributed import World, gather, mean, no_sync, wrap
from pipeline.training.ema import decay_per_step, make_ema, update_ema
from pipeline.training.live import grad_norm

NUM_FIXED_SAMPLES = 64
WALK_SEEDS, WALK_STEPS = (0, 1, 2, 3, 4), 8  # the train stage's walk picture: 4 legs, 9 images each

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def walk_rows(g: torch.nn.Module, latent_dim: int, num_classes: int, device: torch.device) -> list[np.ndarray]:
    """`g` along the walk `ganpipe interpolate --seeds 0-4 --steps 8` takes (pipeline/latents.py), a
    [WALK_STEPS + 1, C, H, W] array per leg, each leg from one seed's image to the next one's. A model
    that takes labels (`num_classes`) walks leg i in class i."""
    z = torch.from_numpy(latents.walk(latents.seed_latents(list(WALK_SEEDS), latent_dim), WALK_STEPS))
    legs = [z[i * WALK_STEPS : (i + 1) * WALK_STEPS + 1] for i in range(len(WALK_SEEDS) - 1)]
    return [sample(g, leg, torch.full((len(leg),), i % num_classes) if num_classes else None, device)
            for i, leg in enumerate(legs)]  # fmt: skip


def diversity(images: np.ndarray | torch.Tensor) -> float:
    """Mean pairwise L2 distance between images: near 0 when G has collapsed to one output."""
    x = torch.as_tensor(images).float().flatten(1)
    return float(torch.pdist(x).mean())


class GanObjective:
    length_matters = False  # constant learning rates: a longer run continues a shorter one exactly

    def __init__(self, params: Params, prepared: Path, device: torch.device, precision: torch.dtype, world: World):
        cfg, mcfg = params.train, params.model
        self.cfg, self.device, self.precision, self.world, self.seed = cfg, device, precision, world, params.seed
        data = stable_subset(prepared, "train", load_split(prepared, "train"), cfg.data_fraction)
        _, channels, image_size, _ = data.images.shape
        # the classes G and D are built for: the data's when conditional or drawn from the noise
        self.num_classes = num_classes = classes_of(mcfg, data.num_classes)
        self.noise_classes = bool(num_classes) and mcfg.noise_classes
        self.latent_dim = mcfg.latent_dim
        self.spec = generator_spec(params, image_size, channels, data.classes)

        self.G = build_generator(mcfg, image_size, channels, num_classes).to(device)
        self.D = build_discriminator(mcfg, image_size, channels, num_classes).to(device)
        if device.type == "cuda" and not cfg.compile:  # inductor fails on channels-last convolution backward
            self.G, self.D = self.G.to(memory_format=torch.channels_last), self.D.to(memory_format=torch.channels_last)
        self.G_ema = make_ema(self.G)
        self.ema_decay = decay_per_step(cfg.ema_decay, cfg.ema_kimg, cfg.batch_size)
        self.opt_g = adam(self.G.parameters(), cfg.lr_g, cfg.betas, device)
        self.opt_d = adam(self.D.parameters(), cfg.lr_d, cfg.betas, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
        self.loss = LOSSES[cfg.loss]
        self.acgan = bool(num_classes) and mcfg.conditioning == "acgan"
        acfg = self.augment_cfg = params.augment
        self.augment = DiffAugment(acfg.diffaugment)
        self.ada = AdaptiveProbability(acfg.ada_target, acfg.ada_interval, acfg.ada_kimg, cfg.batch_size) \
            if acfg.ada else None  # fmt: skip

        shards = cfg.shards(world.size)  # the runner checked that the batch divides into them
        self.micro = cfg.batch_size // shards
        self.mine = [world.rank * cfg.accumulate + i for i in range(cfg.accumulate)]
        # Every draw of a step (batch indices, z, fake labels, augmentation) comes from generators
        # on the training device: no host copy or sync per step on a GPU.
        self.shard_rng = {s: seeded_generator(params.seed * 1000 + 777 + s, device) for s in range(shards)}
        self.batches = BatchSampler(data, cfg.batch_size, seed=params.seed + 1, device=device)
        self.noise = seeded_generator(params.seed + 2, device)  # z and fake labels
        grid_classes = 0 if self.noise_classes else num_classes  # G takes no labels then: a plain grid
        self.z_fixed, self.y_fixed = fixed_inputs(mcfg.latent_dim, grid_classes, params.seed)
        self.real_diversity = diversity(to_float(data.images[: len(self.z_fixed)]))

        # DDP wrappers all-reduce gradients; the plain modules serve penalties, sampling and saving.
        self.G_train, self.D_train = wrap(self.G, world, device, cfg.sync_batchnorm), \
            wrap(self.D, world, device, cfg.sync_batchnorm)  # fmt: skip
        if cfg.compile:
            self.G_train, self.D_train = torch.compile(self.G_train), torch.compile(self.D_train)
        # Alone with one micro-batch, the fakes of the last D step are reused for the G step (one
        # G forward saved). With shards, each G step regenerates them under DDP's sync rules;
        # the values are the same, since only D changed in between.
        self.reuse_fakes = shards == 1
        self.G.train()
        self.D.train()

    # -- hooks a subclass (a variant of this objective) overrides --------------------------------
    def _generate(self, g: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None, s: int) -> torch.Tensor:
        """Shard s's fakes from G (or its DDP wrapper)."""
        return g(z, y)

    def _g_regulariser(self, step: int, z: torch.Tensor, y: torch.Tensor | None, s: int) -> torch.Tensor | None:
        """A term added to shard s's G loss (none here)."""
        return None

    def _after_g_step(self, step: int) -> None:
        """Called once per step after G's optimiser step."""

    # -- one step ------------------------------------------------------------------------------
    def _draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        idx = self.batches.draw()
        z = torch.randn(cfg.batch_size, self.latent_dim, generator=self.noise, device=self.noise.device).to(self.device)
        if self.noise_classes:  # the class G draws from z: what D judges the fake against
            return idx, z, ClassesFromNoise.classes(z, self.num_classes)
        y = torch.randint(self.num_classes, (cfg.batch_size,), generator=self.noise, device=self.noise.device) \
            .to(self.device) if self.num_classes else None  # fmt: skip
        return idx, z, y

    def _part(self, t: torch.Tensor | None, s: int) -> torch.Tensor | None:
        return None if t is None else t[s * self.micro : (s + 1) * self.micro]

    def _d_terms(self, real_aug, y_real, fake_aug, y_fake):
        """D's adversarial loss on (augmented) reals and fakes, plus ACGAN's class term, and D's logits."""
        with autocast(self.device, self.precision):
            real_logits, real_cls = self.D_train(real_aug, y_real)
            fake_logits, fake_cls = self.D_train(fake_aug, y_fake)
        loss = self.loss.d(real_logits.float(), fake_logits.float())
        if self.acgan:
            loss = loss + self.cfg.acgan_weight * (F.cross_entropy(real_cls.float(), y_real)
                                                   + F.cross_entropy(fake_cls.float(), y_fake))  # fmt: skip
        return loss, real_logits, fake_logits

    def _d_loss(self, real, y_real, fake, y_fake, rng, step):
        """D's objective on one shard: adversarial + class + penalty terms."""
        cfg, D = self.cfg, self.D
        real_aug, fake_aug = self.augment(real, rng), self.augment(fake, rng)
        loss, real_logits, fake_logits = self._d_terms(real_aug, y_real, fake_aug, y_fake)
        y_pen = y_real if self.num_classes else None
        if self.loss.gradient_penalty and cfg.gp_weight:
            loss = loss + cfg.gp_weight * gradient_penalty(D, real_aug, fake_aug, y_pen, rng)
        if cfg.r1_gamma and step % cfg.r1_every == 0:  # lazy R1, scaled up by its interval
            loss = loss + cfg.r1_gamma / 2 * cfg.r1_every * r1_penalty(D, real_aug, y_pen)
        return loss, real_logits, fake_logits

    def _real_logits(self, real: torch.Tensor, y: torch.Tensor | None, s: int) -> torch.Tensor:
        """D's logits of shard s's reals in the G step (relativistic losses): constants for G."""
        with torch.no_grad():
            return self.D(self.augment(real, self.shard_rng[s]), y)[0].float()

    def _optimiser_step(self, opt: torch.optim.Optimizer) -> None:
        self.scaler.step(opt)
        self.scaler.update()

    def step(self, step: int, log_now: bool) -> None:
        cfg, device, part = self.cfg, self.device, self._part
        G, D, G_train, D_train = self.G, self.D, self.G_train, self.D_train
        # D: push D(x) up and D(G(z)) down, everything D sees passing through the same augmentation
        if self.ada is not None:
            self.augment.p = self.ada.p
        for _ in range(cfg.n_critic):
            idx, z, y_fake = self._draw()
            self.opt_d.zero_grad(set_to_none=True)
            loss_d_sum = torch.zeros((), device=device)
            reals = {}
            for k, s in enumerate(self.mine):
                real, y_real = self.batches.take(part(idx, s))
                if self.augment_cfg.hflip:
                    real = random_hflip(real, self.shard_rng[s])
                with autocast(device, self.precision):
                    if self.reuse_fakes:
                        fake = self._generate(G_train, part(z, s), part(y_fake, s), s)
                    else:
                        with torch.no_grad():
                            fake = self._generate(G, part(z, s), part(y_fake, s), s)
                with no_sync(D_train, sync=k == len(self.mine) - 1):
                    loss_d, self.real_logits, self.fake_logits = self._d_loss(
                        real, y_real if self.num_classes else None, fake.detach(), part(y_fake, s),
                        self.shard_rng[s], step,
                    )  # fmt: skip
                    self.scaler.scale(loss_d / cfg.accumulate).backward()
                loss_d_sum += loss_d.detach() / cfg.accumulate
                if self.loss.needs_real_for_g:  # the G step compares each fake with the same reals
                    reals[s] = (real, y_real if self.num_classes else None)
                if self.ada is not None:
                    self.ada.observe(self.real_logits)
            self.grad_d = grad_norm(D) if log_now else 0.0
            self._optimiser_step(self.opt_d)

        # G: make D call the fakes real (D frozen: its gradients are not needed here)
        D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g_sum = torch.zeros((), device=device)
        for k, s in enumerate(self.mine):
            with no_sync(G_train, sync=k == len(self.mine) - 1):
                with autocast(device, self.precision):
                    fake_g = fake if self.reuse_fakes else self._generate(G_train, part(z, s), part(y_fake, s), s)
                    logits, cls = D(self.augment(fake_g, self.shard_rng[s]), part(y_fake, s))
                    real_logits = self._real_logits(*reals[s], s) if self.loss.needs_real_for_g else None
                loss_g = self.loss.g(logits.float(), real_logits)
                if self.acgan:
                    loss_g = loss_g + cfg.acgan_weight * F.cross_entropy(cls.float(), part(y_fake, s))
                extra = self._g_regulariser(step, part(z, s), part(y_fake, s), s)
                if extra is not None:
                    loss_g = loss_g + extra
                self.scaler.scale(loss_g / cfg.accumulate).backward()
            loss_g_sum += loss_g.detach() / cfg.accumulate
        self.grad_g = grad_norm(G) if log_now else 0.0
        self._optimiser_step(self.opt_g)
        D.requires_grad_(True)
        self._after_g_step(step)
        update_ema(self.G_ema, G, step, self.ema_decay)
        if self.ada is not None:
            self.ada.maybe_update(step + 1, lambda t: mean(t.to(device), self.world).cpu())
        self.loss_d_sum, self.loss_g_sum = loss_d_sum, loss_g_sum

    # -- what the runner reads -------------------------------------------------------------------
    def losses(self) -> tuple[float, float]:
        return float(mean(self.loss_d_sum, self.world)), float(mean(self.loss_g_sum, self.world))

    def scalars(self, loss_d: float, loss_g: float) -> dict[str, float]:
        to_score = self.loss.score  # D(x), D(G(z)): probabilities where the logits are log-odds
        out = {
            "train/loss_D": loss_d,
            "train/loss_G": loss_g,
            "train/D_real": float(to_score(self.real_logits.detach().float()).mean()),
            "train/D_fake": float(to_score(self.fake_logits.detach().float()).mean()),
            "train/grad_norm_D": self.grad_d,
            "train/grad_norm_G": self.grad_g,
        }  # no learning rates: they are constant here, a flat line
        if self.ada is not None:
            out.update({"train/augment_p": self.ada.p, "train/ada_rt": self.ada.last_rt})
        return out

    def samples(self, step: int) -> tuple[np.ndarray, dict[str, float], list[str]]:
        images = sample(self.G_ema, self.z_fixed, self.y_fixed, self.device)
        ratio = diversity(images) / max(self.real_diversity, 1e-12)
        warnings = []
        if ratio < self.cfg.collapse_threshold:
            warnings.append(f"step {step}: possible mode collapse: fixed-noise samples are {ratio:.2f}x as diverse "
                            f"as real images (threshold train.collapse_threshold={self.cfg.collapse_threshold})")
        grid = make_grid(images, nrow=8)
        return (grid[..., 0] if grid.shape[-1] == 1 else grid), {"train/sample_diversity": ratio}, warnings

    def gather_states(self, rngs: dict[int, torch.Generator]) -> list[torch.Tensor]:
        """The states of per-shard generators, every shard's from whichever process holds it."""
        return [st for rank_states in gather({s: rngs[s].get_state() for s in self.mine}, self.world)
                for st in rank_states.values()]  # fmt: skip

    @staticmethod
    def set_states(rngs: dict[int, torch.Generator], states: list[torch.Tensor]) -> None:
        for s, st in enumerate(states):
            rngs[s].set_state(st)

    def state_dict(self) -> dict:
        shard_states = self.gather_states(self.shard_rng)
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"batches": self.batches.generator.get_state(), "noise": self.noise.get_state(),
                    "shards": shard_states},
            **({"ada": self.ada.state_dict()} if self.ada is not None else {}),
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for name in ("G", "D", "G_ema", "opt_g", "opt_d", "scaler"):
            getattr(self, name).load_state_dict(state[name])
        self.batches.generator.set_state(state["rng"]["batches"])
        self.noise.set_state(state["rng"]["noise"])
        self.set_states(self.shard_rng, state["rng"]["shards"])
        if self.ada is not None:
            self.ada.load_state_dict(state["ada"])

    def trained_modules(self) -> list[torch.nn.Module]:
        return [self.G, self.D]

    def networks(self) -> list[torch.nn.Module]:
        return [self.G, self.D, self.G_ema]

    def model_artifact(self) -> tuple[dict, dict]:
        return self.spec, {k: v.detach().cpu() for k, v in self.G_ema.state_dict().items()}  # G_ema stays put

    def save_samples(self, path: Path) -> None:
        g = self.G_ema.to("cpu")
        save_grid(sample(g, self.z_fixed, self.y_fixed, torch.device("cpu")), path, nrow=8, scale=3)

    def walk_figure(self, steps: int) -> Figure:
        """The EMA generator along walks between WALK_SEEDS, a row per leg (`walk_rows`)."""
        labelled = 0 if self.noise_classes else self.num_classes
        rows = walk_rows(self.G_ema, self.latent_dim, labelled, self.device)
        names = self.spec["class_names"] or [str(c) for c in range(self.num_classes)]
        labels = [f"seed {a} → {b}" + (f"\nclass {names[i % labelled]}" if labelled else "")
                  for i, (a, b) in enumerate(itertools.pairwise(WALK_SEEDS))]  # fmt: skip
        title = f"Walks between seeds (spherical, in z) after {steps} steps"
        return labelled_figure(rows, labels, title=title, nrow=WALK_STEPS + 1, stacked=True, scale=2)
