"""pix2pix (Isola et al., 2017): paired style transfer.

G_AB is a U-Net; D is a PatchGAN conditioned on the input (the channels of A and B stacked).
G minimises the adversarial loss + lambda_l1 * |G(a) - b|. Each step takes the same rows of
A and B (the pairs).
"""

from __future__ import annotations

import torch

from pipeline.config import ModelConfig
from pipeline.models import build_discriminator
from pipeline.runtime import autocast
from pipeline.training.objectives.translation import TranslationObjective


class Pix2PixObjective(TranslationObjective):
    def _discriminators(self, mcfg: ModelConfig, image_size: int, channels: int) -> dict[str, torch.nn.Module]:
        return {"B": build_discriminator(mcfg, image_size, 2 * channels).to(self.device)}

    def step(self, step: int, log_now: bool) -> None:
        idx = self.batches_a.draw()
        real_a, _ = self.batches_a.take(idx)
        real_b, _ = self.batches_b.take(idx)
        real_a, real_b = self.jitter(real_a, real_b)  # the same window of both: the pair stays aligned

        self.start_g_step()
        with autocast(self.device, self.precision):
            fake_b = self.G["AB"](real_a)
        terms = {"adv": self.g_adv(self.D["B"], torch.cat([real_a, fake_b], 1)),
                 "l1": (fake_b.float() - real_b).abs().mean()}  # fmt: skip
        self.finish_g_step(terms["adv"] + self.cfg.lambda_l1 * terms["l1"], terms, log_now)

        real_pair, fake_pair = torch.cat([real_a, real_b], 1), torch.cat([real_a, fake_b.detach().float()], 1)
        self.finish_d_step(self.d_loss(self.D["B"], real_pair, fake_pair), step)
