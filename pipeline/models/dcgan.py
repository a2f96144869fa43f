"""DCGAN (Radford et al., 2016) generator and discriminator, sized by the image size.

Each block doubles (G) or halves (D) the resolution, starting from / ending at 4x4, so
image_size = 4 * 2**blocks. Conditional variants embed the label into G's input and use
a projection discriminator (Miyato & Koyama, 2018). Plain modules: they print readably
and export to ONNX without tricks.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _num_blocks(image_size: int) -> int:
    blocks = int(math.log2(image_size)) - 2
    if blocks < 1 or 4 * 2**blocks != image_size:
        raise ValueError(f"DCGAN needs a power-of-two image_size >= 8, got {image_size}")
    return blocks


class Generator(nn.Module):
    """z [N, latent_dim] (+ labels [N]) -> images [N, C, H, W] in [-1, 1]."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int = 64, num_classes: int = 0):
        super().__init__()
        blocks = _num_blocks(image_size)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        top = width * 2 ** (blocks - 1)
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        in_dim = latent_dim * (2 if num_classes else 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, top, 4, 1, 0, bias=False),  # 1x1 -> 4x4
            nn.BatchNorm2d(top),
            nn.ReLU(inplace=True),
        ]
        ch = top
        for _ in range(blocks - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("conditional generator needs labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """images [N, C, H, W] (+ labels [N]) -> logits [N]."""

    def __init__(self, image_size: int, channels: int, width: int = 64, num_classes: int = 0):
        super().__init__()
        blocks = _num_blocks(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(blocks - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # -> [N, ch, 4, 4]
        self.head = nn.Linear(ch * 16, 1)
        self.embed = nn.Embedding(num_classes, ch * 16) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x).flatten(1)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("conditional discriminator needs labels")
            out = out + (self.embed(labels) * h).sum(1)  # projection term
        return out


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
