"""DCGAN (Radford et al., 2016) generator and discriminator, sized by the image size.

Each block doubles (G) or halves (D) the resolution, starting from / ending at 4x4, so
image_size = 4 * 2**blocks (32, 64 and 128 px are the tested sizes). A conditional G
concatenates a label embedding to z. Plain modules: they print readably and export to
ONNX without tricks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.layers import DiscriminatorHead, sn


def num_blocks(image_size: int) -> int:
    blocks = int(math.log2(image_size)) - 2
    if blocks < 1 or 4 * 2**blocks != image_size:
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return blocks


class Generator(nn.Module):
    """z [N, latent_dim] (+ labels [N]) -> images [N, C, H, W] in [-1, 1]."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int = 64, num_classes: int = 0):
        super().__init__()
        blocks = num_blocks(image_size)
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
    """images [N, C, H, W] (+ labels [N]) -> (logits [N], class logits [N, K] or None)."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        width: int = 64,
        num_classes: int = 0,
        conditioning: str = "projection",
        spectral: bool = False,
        norm: str = "batch",
    ):
        super().__init__()
        blocks = num_blocks(image_size)
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, width, 4, 2, 1), spectral), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(blocks - 1):
            layers.append(sn(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm != "batch"), spectral))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        self.features = nn.Sequential(*layers)  # -> [N, ch, 4, 4]
        self.head = DiscriminatorHead(ch * 16, num_classes, conditioning, spectral)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(self.features(x).flatten(1), labels)
