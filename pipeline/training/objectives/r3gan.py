"""R3GAN (Huang et al., NeurIPS 2024): the image-generation objective with the relativistic pairing
loss, R1 and R2, and cosine schedules over the run.

Everything of `GanObjective` holds (DiffAugment and ADA, shards, EMA, exact resume); what differs:
- D's loss is the relativistic pairing loss plus gamma/2 x (R1 + R2) at every step (not lazily):
  the zero-centred gradient penalties on the reals and on the fakes D judged, taken at the images
  D saw (after augmentation, as `GanObjective`'s R1). Alone and uncompiled, the penalties reuse the
  logits of the loss, so each D step costs two forwards, as the official code does; under DDP or
  torch.compile they take separate forwards of the plain D, as `GanObjective`'s R1 does.
- G's loss is the relativistic pairing loss (train.loss must be relativistic).
- The learning rates (train.lr_g, train.lr_d -> x train.r3gan_lr_final), gamma (train.r3gan_gamma ->
  train.r3gan_gamma_final) and Adam's beta2 (train.betas[1] -> train.r3gan_beta2_final) follow a
  cosine from their first to their final value over train.steps, as the official code's schedules
  do over its decay length. Each is a pure function of the step, set before the step runs, so a
  resumed run continues exactly; the run length is part of the checkpoint fingerprint
  (`length_matters`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config import Params, TrainConfig
from pipeline.losses import r1_penalty, r2_penalty, zero_centred_penalty
from pipeline.training.objectives.gan import GanObjective


def cosine(step: int, steps: int, first: float, final: float) -> float:
    """`first` at step 0, `final` at `steps` (and after), along half a cosine in between."""
    progress = min(step / steps, 1.0)
    return final + (first - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """The values R3GAN's schedules take at one step."""

    lr_g: float
    lr_d: float
    gamma: float
    beta2: float

    @classmethod
    def at(cls, cfg: TrainConfig, step: int) -> Schedule:
        def along(first: float, final: float) -> float:
            return cosine(step, cfg.steps, first, final)

        return cls(lr_g=along(cfg.lr_g, cfg.lr_g * cfg.r3gan_lr_final),
                   lr_d=along(cfg.lr_d, cfg.lr_d * cfg.r3gan_lr_final),
                   gamma=along(cfg.r3gan_gamma, cfg.r3gan_gamma_final),
                   beta2=along(cfg.betas[1], cfg.r3gan_beta2_final))  # fmt: skip


class R3GanObjective(GanObjective):
    length_matters = True  # the schedules run over train.steps

    def __init__(self, params: Params, *args, **kwargs):  # params.train.loss is relativistic (the catalog's)
        super().__init__(params, *args, **kwargs)
        self.penalised = bool(self.cfg.r3gan_gamma or self.cfg.r3gan_gamma_final)
        self.fused = self.D_train is self.D  # no DDP or compiled wrapper: the penalties reuse the loss's forward
        self._set_schedule(0)

    def _set_schedule(self, step: int) -> None:
        self.schedule = now = Schedule.at(self.cfg, step)
        for opt, lr in ((self.opt_g, now.lr_g), (self.opt_d, now.lr_d)):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (group["betas"][0], now.beta2)

    def step(self, step: int, log_now: bool) -> None:
        self._set_schedule(step)
        super().step(step, log_now)

    def _d_loss(self, real, y_real, fake, y_fake, rng, step):
        """D's objective on one shard: relativistic pairing + gamma/2 (R1 + R2) (+ ACGAN's class term)."""
        gamma = self.schedule.gamma
        real_aug, fake_aug = self.augment(real, rng), self.augment(fake, rng)
        fused = self.penalised and self.fused
        if fused:
            real_aug, fake_aug = real_aug.detach().requires_grad_(True), fake_aug.detach().requires_grad_(True)
        loss, real_logits, fake_logits = self._d_terms(real_aug, y_real, fake_aug, y_fake)
        if self.penalised:
            if fused:
                r1 = zero_centred_penalty(real_aug, real_logits.float())
                r2 = zero_centred_penalty(fake_aug, fake_logits.float())
            else:
                r1, r2 = r1_penalty(self.D, real_aug, y_real), r2_penalty(self.D, fake_aug, y_fake)
            self.r1, self.r2 = r1.detach(), r2.detach()
            loss = loss + gamma / 2 * (r1 + r2)
        return loss, real_logits.detach(), fake_logits.detach()

    def scalars(self, loss_d: float, loss_g: float) -> dict[str, float]:
        now = self.schedule
        out = {**super().scalars(loss_d, loss_g), "train/lr_G": now.lr_g, "train/lr_D": now.lr_d,
               "train/gamma": now.gamma, "train/beta2": now.beta2}  # fmt: skip
        if self.penalised:
            out.update({"train/R1": float(self.r1), "train/R2": float(self.r2)})
        return out
