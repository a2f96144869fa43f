"""Differentiable augmentation applied to every image D sees, real and generated.

DiffAugment (Zhao et al., 2020): colour, translation and cutout transforms that gradients
flow through, so D cannot overfit a small dataset while G is still trained on the true
distribution. Randomness comes from the module's own generator, saved in checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DiffAugment:
    """Apply the comma-separated `policy` (color, translation, cutout) to a batch in [-1, 1].

    Random draws come from the generator passed per call, so the caller owns (and
    checkpoints) the random state; an empty policy is the identity. `p` < 1 augments
    each image with probability p (the adaptive mode sets it during training); at p = 1
    every image is augmented and no extra random numbers are drawn.
    """

    def __init__(self, policy: str, translation_ratio: float = 0.125, cutout_ratio: float = 0.5, p: float = 1.0):
        self.policies = [p for p in policy.split(",") if p]
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio
        self.p = p
        self.generator: torch.Generator | None = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.generator = generator
        if not self.policies or self.p <= 0:
            return x
        original = x
        for p in self.policies:
            x = getattr(self, f"_{p}")(x)
        if self.p < 1:
            chosen = self._rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
            x = torch.where(chosen, x, original)
        return x

    def _rand(self, *shape: int, device: torch.device) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator, device=self.generator.device).to(device)

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x + (self._rand(n, 1, 1, 1, device=x.device) - 0.5)  # brightness
        if x.shape[1] > 1:  # saturation has no meaning for one channel
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (self._rand(n, 1, 1, 1, device=x.device) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (self._rand(n, 1, 1, 1, device=x.device) + 0.5) + mean  # contrast

    def _translation(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        sh, sw = int(h * self.translation_ratio + 0.5), int(w * self.translation_ratio + 0.5)
        ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=self.generator, device=self.generator.device).to(x.device)
        tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=self.generator, device=self.generator.device).to(x.device)
        b, gy, gx = torch.meshgrid(
            torch.arange(n, device=x.device),
            torch.arange(h, device=x.device),
            torch.arange(w, device=x.device),
            indexing="ij",
        )
        gy = torch.clamp(gy + ty + 1, 0, h + 1)  # +1: index into the zero-padded border
        gx = torch.clamp(gx + tx + 1, 0, w + 1)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
        return padded[b, gy, gx].permute(0, 3, 1, 2)

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ch, cw = int(h * self.cutout_ratio + 0.5), int(w * self.cutout_ratio + 0.5)
        g = self.generator
        oy = torch.randint(0, h, (n, 1, 1), generator=g, device=g.device).to(x.device)  # square centre
        ox = torch.randint(0, w, (n, 1, 1), generator=g, device=g.device).to(x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((ys - oy).abs() * 2 < ch) & ((xs - ox).abs() * 2 < cw)
        return x * (~inside).unsqueeze(1).to(x.dtype)


class AdaptiveProbability:
    """ADA's controller (Karras et al., 2020) for the augmentation probability p.

    The overfitting heuristic r_t = E[sign(D(real))] is collected over `interval` steps;
    p then moves up when r_t > target (D is too sure of the reals) and down otherwise, by
    an amount that lets p cross 0..1 in `kimg` thousand images. Logits are raw D scores,
    so the heuristic fits losses whose real/fake boundary is 0 (non-saturating, hinge).
    """

    def __init__(self, target: float, interval: int, kimg: float, batch_size: int):
        self.target, self.interval = target, interval
        self.step_size = batch_size * interval / (kimg * 1000)
        self.p, self.sign_sum, self.count, self.last_rt = 0.0, 0.0, 0, 0.0

    def observe(self, real_logits: torch.Tensor) -> None:
        # summed where the logits live (in float64, as a Python float would): no sync per step
        self.sign_sum = self.sign_sum + torch.sign(real_logits.detach().float()).sum().double()
        self.count += real_logits.numel()

    def maybe_update(self, step: int, reduce=None) -> None:
        """Adjust p every `interval` steps; `reduce` averages a tensor across processes (DDP),
        so every process keeps the same p."""
        if step % self.interval or not self.count:
            return
        totals = torch.tensor([float(self.sign_sum), float(self.count)], dtype=torch.float64)
        if reduce is not None:
            totals = reduce(totals)
        self.last_rt = float(totals[0] / totals[1])
        direction = 1.0 if self.last_rt > self.target else -1.0
        self.p = min(max(self.p + direction * self.step_size, 0.0), 1.0)
        self.sign_sum, self.count = 0.0, 0

    def state_dict(self) -> dict:
        return {"p": self.p, "sign_sum": float(self.sign_sum), "count": self.count, "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.sign_sum = state["p"], state["sign_sum"]
        self.count, self.last_rt = state["count"], state["last_rt"]


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Classic augmentation of real images: each flipped left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=generator.device) < 0.5).to(x.device)
    return torch.where(flip, x.flip(3), x)


def preview(images: torch.Tensor, policy: str, seed: int = 0, copies: int = 2) -> list[torch.Tensor]:
    """The images as D sees them: the originals followed by `copies` augmented versions."""
    augment, gen = DiffAugment(policy), torch.Generator().manual_seed(seed)
    return [images] + [augment(images, gen).clamp(-1, 1) for _ in range(copies)]
