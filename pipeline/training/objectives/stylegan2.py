"""StyleGAN2: the image-generation objective with StyleGAN2's own regularisers.

Everything of `GanObjective` holds (any of its losses but WGAN-GP, lazy R1, DiffAugment and
ADA, shards, exact resume); on top: fresh per-layer noise in every training forward, style
mixing (with probability train.style_mixing a batch feeds a second z's w to the layers from
a random cutoff on), and lazy path-length regularisation every train.pl_every G steps.
Every random draw comes from the shard's seeded generator, so a resumed run continues the
same streams.
"""

from __future__ import annotations

import torch

from pipeline.losses import path_length_penalty, path_lengths
from pipeline.training.distributed import mean
from pipeline.training.objectives.gan import GanObjective


class StyleGan2Objective(GanObjective):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pl_mean = torch.zeros((), device=self.device)  # running mean of path lengths
        self._pl_lengths: list[torch.Tensor] = []
        # Style mixing's coin and cutoff steer Python control flow: on a GPU they come from CPU
        # generators of their own, so drawing them never waits for the GPU. On the CPU they are
        # the shard generators themselves.
        self.host_rng = self.shard_rng if self.device.type != "cuda" else \
            {s: torch.Generator().manual_seed(self.seed * 1000 + 555 + s) for s in self.shard_rng}  # fmt: skip

    def _generate(self, g: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None, s: int) -> torch.Tensor:
        rng, host = self.shard_rng[s], self.host_rng[s]
        mix = None
        if self.cfg.style_mixing and float(torch.rand((), generator=host)) < self.cfg.style_mixing:
            cutoff = int(torch.randint(1, self.G.num_ws, (), generator=host))
            mix = (torch.randn(z.shape, generator=rng, device=rng.device).to(z.device, z.dtype), cutoff)
        return g(z, y, mix=mix, noise_rng=rng)

    def _g_regulariser(self, step: int, z: torch.Tensor, y: torch.Tensor | None, s: int) -> torch.Tensor | None:
        cfg = self.cfg
        if not cfg.pl_weight or step % cfg.pl_every:
            return None
        n = max(1, z.shape[0] // cfg.pl_batch_shrink)
        rng = self.shard_rng[s]
        ws = self.G.ws(z[:n], None if y is None else y[:n])
        lengths = path_lengths(lambda w: self.G.synthesis(w, noise_rng=rng), ws, rng)
        self._pl_lengths.append(lengths.detach().mean())
        return cfg.pl_weight * cfg.pl_every * path_length_penalty(lengths, self.pl_mean)

    def _after_g_step(self, step: int) -> None:
        if self._pl_lengths:  # the mean over every shard of every process, so the split does not matter
            batch_mean = mean(torch.stack(self._pl_lengths).mean(), self.world)
            self.pl_mean = self.pl_mean.lerp(batch_mean.to(self.pl_mean.device), self.cfg.pl_decay)
            self._pl_lengths = []

    def scalars(self, loss_d: float, loss_g: float) -> dict[str, float]:
        return {**super().scalars(loss_d, loss_g), "train/pl_mean": float(self.pl_mean)}

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "pl_mean": self.pl_mean.cpu()}
        if self.host_rng is not self.shard_rng:
            state["rng"]["host"] = self.gather_states(self.host_rng)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pl_mean = state["pl_mean"].to(self.device)
        if self.host_rng is not self.shard_rng:
            self.set_states(self.host_rng, state["rng"]["host"])
