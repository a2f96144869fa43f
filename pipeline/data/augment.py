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
    checkpoints) the random state; an empty policy is the identity.
    """

    def __init__(self, policy: str, translation_ratio: float = 0.125, cutout_ratio: float = 0.5):
        self.policies = [p for p in policy.split(",") if p]
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio
        self.generator: torch.Generator | None = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.generator = generator
        for p in self.policies:
            x = getattr(self, f"_{p}")(x)
        return x

    def _rand(self, *shape: int, device: torch.device) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator).to(device)

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
        ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=self.generator).to(x.device)
        tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=self.generator).to(x.device)
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
        oy = torch.randint(0, h, (n, 1, 1), generator=self.generator).to(x.device)  # square centre
        ox = torch.randint(0, w, (n, 1, 1), generator=self.generator).to(x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((ys - oy).abs() * 2 < ch) & ((xs - ox).abs() * 2 < cw)
        return x * (~inside).unsqueeze(1).to(x.dtype)


def preview(images: torch.Tensor, policy: str, seed: int = 0, copies: int = 2) -> list[torch.Tensor]:
    """The images as D sees them: the originals followed by `copies` augmented versions."""
    augment, gen = DiffAugment(policy), torch.Generator().manual_seed(seed)
    return [images] + [augment(images, gen).clamp(-1, 1) for _ in range(copies)]
