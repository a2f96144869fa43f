"""CycleGAN (Zhu et al., 2017): unpaired style transfer.

G_AB, G_BA; PatchGANs D_A (judges A images) and D_B (judges B images). G minimises the
adversarial loss in both directions + lambda_cycle * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|)
+ lambda_identity * lambda_cycle * (|G_BA(a) - a| + |G_AB(b) - b|). D sees fakes drawn from a
history pool. A and B are drawn independently (unpaired), even from paired data.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import ModelConfig, Params
from pipeline.losses import cycle_loss, identity_loss
from pipeline.models import build_discriminator
from pipeline.models.translation import ImagePool
from pipeline.runtime import autocast
from pipeline.training.distributed import World
from pipeline.training.objectives.translation import TranslationObjective


class CycleGanObjective(TranslationObjective):
    def __init__(self, params: Params, prepared: Path, device: torch.device, precision: torch.dtype, world: World):
        super().__init__(params, prepared, device, precision, world)
        self.pool_gen = torch.Generator().manual_seed(params.seed + 3)
        self.pools = {d: ImagePool(params.train.pool_size, generator=self.pool_gen) for d in self.D}

    def _discriminators(self, mcfg: ModelConfig, image_size: int, channels: int) -> dict[str, torch.nn.Module]:
        return {d: build_discriminator(mcfg, image_size, channels).to(self.device) for d in ("A", "B")}

    def step(self, step: int, log_now: bool) -> None:
        cfg, G, D = self.cfg, self.G, self.D
        real_a, _ = self.batches_a.take(self.batches_a.draw())
        real_b, _ = self.batches_b.take(self.batches_b.draw())
        (real_a,), (real_b,) = self.jitter(real_a), self.jitter(real_b)  # unpaired: each domain on its own

        self.start_g_step()
        with autocast(self.device, self.precision):
            fake_b, fake_a = G["AB"](real_a), G["BA"](real_b)
            rec_a, rec_b = G["BA"](fake_b), G["AB"](fake_a)
        terms = {"adv": self.g_adv(D["B"], fake_b) + self.g_adv(D["A"], fake_a),
                 "cycle": cycle_loss(real_a, rec_a.float()) + cycle_loss(real_b, rec_b.float())}  # fmt: skip
        loss_g = terms["adv"] + cfg.lambda_cycle * terms["cycle"]
        if cfg.lambda_identity > 0:
            with autocast(self.device, self.precision):
                same_a, same_b = G["BA"](real_a), G["AB"](real_b)
            terms["identity"] = identity_loss(real_a, same_a.float()) + identity_loss(real_b, same_b.float())
            loss_g = loss_g + cfg.lambda_identity * cfg.lambda_cycle * terms["identity"]
        self.finish_g_step(loss_g, terms, log_now)

        # D on detached fakes drawn through the history pools
        loss_d = self.d_loss(D["B"], real_b, self.pools["B"].query(fake_b.detach().float()))
        loss_d = loss_d + self.d_loss(D["A"], real_a, self.pools["A"].query(fake_a.detach().float()))
        self.finish_d_step(loss_d, step)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["pools"] = {d: p.state_dict() for d, p in self.pools.items()}
        state["rng"]["pool"] = self.pool_gen.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for d, pool in self.pools.items():
            pool.load_state_dict(state["pools"][d])
        self.pool_gen.set_state(state["rng"]["pool"])
