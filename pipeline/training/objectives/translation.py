"""What the style-transfer objectives (cyclegan.py, pix2pix.py) share: two-domain data, the
translators and their EMA copies, Adam with the reference's linear decay, the adversarial
terms on patch logits, checkpoint state and the input | output | target sample panel.
Each subclass builds its discriminators and writes its own step.

The adversarial terms are `train.loss` on patch logits (lsgan, as CycleGAN's reference:
D's loss is (D(x) - 1)^2 / 2 + D(G(.))^2 / 2, already halved as the reference does; pix2pix's
reference uses the non-saturating loss). Learning rates decay linearly to 0 from
`train.lr_decay_start` (a fraction of the steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import read_json
from pipeline.config import ModelConfig, Params
from pipeline.dataset import BatchSampler, PreparedSplit, load_split, stable_subset, to_float
from pipeline.errors import MissingInput, UserError
from pipeline.grid import make_grid, save_panels
from pipeline.losses import LOSSES
from pipeline.models import build_generator, directions
from pipeline.models.artifact import translator_spec
from pipeline.runtime import adam, autocast
from pipeline.training.distributed import World
from pipeline.training.ema import decay_per_step, make_ema, update_ema
from pipeline.training.live import grad_norm

NUM_FIXED = 8  # val inputs shown in every sample grid


def linear_decay(steps: int, decay_start: float):
    """The reference's learning-rate factor, in steps instead of epochs: 1, then linearly to 0."""
    start = int(steps * decay_start)

    def factor(step: int) -> float:
        return 1.0 if step < start else max(0.0, 1.0 - (step - start) / max(1, steps - start))

    return factor


def _pair_mask(prepared: Path, fraction: float) -> np.ndarray:
    files = [f for f in read_json(prepared / "manifest.json")["files"] if f["split"] == "train" and f["label"] == "A"]
    keep = np.array([int(f["sha256"][8:16], 16) / 16**8 < fraction for f in files])
    if not keep.any():
        raise MissingInput(f"train.data_fraction={fraction} leaves no training pairs; raise it")
    return keep


def _domains(prepared: Path, fraction: float) -> tuple[PreparedSplit, PreparedSplit]:
    """Both training domains, subset by `train.data_fraction`; pairs stay together."""
    if not (prepared / "train_A.npy").is_file():
        raise MissingInput(f"{prepared}: no two-domain data (train_A.npy); rerun prepare with task: translate")
    paired = bool(read_json(prepared / "manifest.json").get("paired"))
    a, b = load_split(prepared, "train", "A"), load_split(prepared, "train", "B")
    if fraction >= 1:
        return a, b
    if not paired:
        return stable_subset(prepared, "train", a, fraction, "A"), stable_subset(prepared, "train", b, fraction, "B")
    keep = _pair_mask(prepared, fraction)
    return (PreparedSplit(a.images[keep], a.labels[keep], a.classes),
            PreparedSplit(b.images[keep], b.labels[keep], b.classes))  # fmt: skip


@torch.no_grad()
def translate_batch(g: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    was = g.training
    g.eval()
    out = g(x.to(device)).float().cpu()
    g.train(was)
    return out


def _panels(g, val_a, val_b, device) -> list[np.ndarray]:
    """input | output | target rows, as [N, C, H, W] arrays for save_panels."""
    out = translate_batch(g, val_a, device)
    return [val_a.numpy(), out.numpy(), val_b.numpy()]


class TranslationObjective:
    def __init__(self, params: Params, prepared: Path, device: torch.device, precision: torch.dtype, world: World):
        if world.enabled:  # params refuse it; torchrun started by hand would otherwise train N copies
            raise UserError("task translate trains in one process: set train.nproc_per_node: 1")
        cfg, mcfg = params.train, params.model
        self.cfg, self.device, self.precision = cfg, device, precision
        data_a, data_b = _domains(prepared, cfg.data_fraction)
        _, channels, image_size, _ = data_a.images.shape
        self.val_a = to_float(load_split(prepared, "val", "A").images[:NUM_FIXED])
        self.val_b = to_float(load_split(prepared, "val", "B").images[:NUM_FIXED])

        self.G = {d: build_generator(mcfg, image_size, channels).to(device) for d in directions(mcfg.arch)}
        self.D = self._discriminators(mcfg, image_size, channels)
        self.G_ema = {d: make_ema(g) for d, g in self.G.items()}
        self.ema_decay = decay_per_step(cfg.ema_decay, cfg.ema_kimg, cfg.batch_size)
        self.opt_g = adam([p for g in self.G.values() for p in g.parameters()], cfg.lr_g, cfg.betas, device)
        self.opt_d = adam([p for d in self.D.values() for p in d.parameters()], cfg.lr_d, cfg.betas, device)
        # the decay is spread over train.steps: a checkpoint of a run of another length is not resumed
        self.length_matters = cfg.lr_decay_start < 1
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, linear_decay(cfg.steps, cfg.lr_decay_start))
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, linear_decay(cfg.steps, cfg.lr_decay_start))
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
        self.loss = LOSSES[cfg.loss]  # config refuses the losses whose G step needs real logits here
        self.batches_a = BatchSampler(data_a, cfg.batch_size, seed=params.seed + 1, device=device)
        self.batches_b = BatchSampler(data_b, cfg.batch_size, seed=params.seed + 2, device=device)
        self.jitter_pixels = params.augment.jitter
        self.jitter_gen = torch.Generator().manual_seed(params.seed + 3)
        ab = self.G["AB"]
        self.spec = translator_spec(params, image_size, channels, ab.size_multiple, ab.min_size)
        for m in [*self.G.values(), *self.D.values()]:
            m.train()
            if cfg.compile:  # in place: state_dict keys stay those of the plain module
                m.compile()
            elif device.type == "cuda":  # inductor fails on channels-last convolution backward
                m.to(memory_format=torch.channels_last)

    def _discriminators(self, mcfg: ModelConfig, image_size: int, channels: int) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    # -- pieces of a step ------------------------------------------------------------------------
    def jitter(self, *batches: torch.Tensor) -> list[torch.Tensor]:
        """augment.jitter: pix2pix's random jitter. Each batch [N, C, H, W] is resized to H + j and
        cropped back to H x W at a random place per row; the same place in every batch given, so
        a pair (A, B) stays aligned."""
        if not self.jitter_pixels:
            return list(batches)
        j = self.jitter_pixels
        n, _, h, w = batches[0].shape
        offsets = torch.randint(0, j + 1, (n, 2), generator=self.jitter_gen).tolist()
        out = []
        for x in batches:
            big = torch.nn.functional.interpolate(x, size=(h + j, w + j), mode="bilinear", align_corners=False)
            out.append(torch.stack([big[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]))
        return out

    def d_loss(self, disc: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            real_logits, fake_logits = disc(real), disc(fake)
        return self.loss.d(real_logits.float(), fake_logits.float())

    def g_adv(self, disc: torch.nn.Module, fake: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = disc(fake)
        return self.loss.g(logits.float(), None)

    def start_g_step(self) -> None:
        for disc in self.D.values():
            disc.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)

    def finish_g_step(self, loss_g: torch.Tensor, terms: dict[str, torch.Tensor], log_now: bool) -> None:
        self.scaler.scale(loss_g).backward()
        self.grad_g = grad_norm(self.G["AB"]) if log_now else 0.0
        self.scaler.step(self.opt_g)
        self.scaler.update()
        for disc in self.D.values():
            disc.requires_grad_(True)
        self.loss_g, self.terms = loss_g, terms
        self.opt_d.zero_grad(set_to_none=True)

    def finish_d_step(self, loss_d: torch.Tensor, step: int) -> None:
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        self.sched_g.step()
        self.sched_d.step()
        for d, g in self.G.items():
            update_ema(self.G_ema[d], g, step, self.ema_decay)
        self.loss_d = loss_d

    # -- what the runner reads -------------------------------------------------------------------
    def losses(self) -> tuple[float, float]:
        return float(self.loss_d.detach()), float(self.loss_g.detach())

    def scalars(self, loss_d: float, loss_g: float) -> dict[str, float]:
        out = {"train/loss_G": loss_g, "train/loss_D": loss_d,
               **{f"train/{name}": float(value.detach()) for name, value in self.terms.items()},
               "train/grad_norm_G": self.grad_g}  # fmt: skip
        if self.length_matters:  # the learning rates decay (train.lr_decay_start < 1); constant ones make flat plots
            out.update({"train/lr_G": self.opt_g.param_groups[0]["lr"], "train/lr_D": self.opt_d.param_groups[0]["lr"]})
        return out

    def samples(self, step: int) -> tuple[np.ndarray, dict[str, float], list[str]]:
        a, out, b = _panels(self.G_ema["AB"], self.val_a, self.val_b, self.device)
        grid = make_grid(np.concatenate([a, out, b]), nrow=len(a))  # three rows of NUM_FIXED
        return (grid[..., 0] if grid.shape[-1] == 1 else grid), {}, []

    def state_dict(self) -> dict:
        return {
            "G": {d: g.state_dict() for d, g in self.G.items()},
            "G_ema": {d: g.state_dict() for d, g in self.G_ema.items()},
            "D": {d: m.state_dict() for d, m in self.D.items()},
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"a": self.batches_a.generator.get_state(), "b": self.batches_b.generator.get_state(),
                    "jitter": self.jitter_gen.get_state()},
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for name in ("G", "G_ema", "D"):
            for d, module in getattr(self, name).items():
                module.load_state_dict(state[name][d])
        for name in ("opt_g", "opt_d", "sched_g", "sched_d", "scaler"):
            getattr(self, name).load_state_dict(state[name])
        self.batches_a.generator.set_state(state["rng"]["a"])
        self.batches_b.generator.set_state(state["rng"]["b"])
        self.jitter_gen.set_state(state["rng"]["jitter"])

    def trained_modules(self) -> list[torch.nn.Module]:
        return [*self.G.values(), *self.D.values()]

    def networks(self) -> list[torch.nn.Module]:
        return [*self.G.values(), *self.D.values(), *self.G_ema.values()]

    def model_artifact(self) -> tuple[dict, dict]:
        return self.spec, {d: {k: v.detach().cpu() for k, v in g.state_dict().items()} for d, g in self.G_ema.items()}

    def save_samples(self, path: Path) -> None:
        cpu = torch.device("cpu")
        save_panels(_panels(self.G_ema["AB"].cpu(), self.val_a, self.val_b, cpu), path, nrow=1, scale=3)

    def walk_figure(self, steps: int) -> None:
        """A translator has no latent to walk."""
        return None
