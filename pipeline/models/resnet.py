"""ResNet generator and discriminator in the style of SNGAN (Miyato et al., 2018).

G: linear z -> 4x4, residual up-blocks (conditional batch norm for class-conditional
models), BN-ReLU-conv-tanh. D: residual down-blocks to 4x4, one more block, ReLU, global
sum pooling, then the shared head (projection or ACGAN). Tested at 32 and 64 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.dcgan import num_blocks
from pipeline.models.layers import ConditionalBatchNorm2d, DiscriminatorHead, sn


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.bn1, self.bn2 = ConditionalBatchNorm2d(cin, num_classes), ConditionalBatchNorm2d(cout, num_classes)
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, labels)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Generator(nn.Module):
    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int = 64, num_classes: int = 0):
        super().__init__()
        self.latent_dim, self.num_classes, self.width = latent_dim, num_classes, width
        self.linear = nn.Linear(latent_dim, 4 * 4 * width)
        self.blocks = nn.ModuleList(GBlock(width, width, num_classes) for _ in range(num_blocks(image_size)))
        self.bn = nn.BatchNorm2d(width)
        self.out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and labels is None:
            raise ValueError("conditional generator needs labels")
        h = self.linear(z).view(z.shape[0], self.width, 4, 4)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.out(F.relu(self.bn(h))))


class DBlock(nn.Module):
    """Pre-activation residual block; `first` skips the leading ReLU (it sees raw pixels)."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool, spectral: bool, norm: str):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = sn(nn.Conv2d(cin, cout, 3, 1, 1), spectral)
        self.conv2 = sn(nn.Conv2d(cout, cout, 3, 1, 1), spectral)
        self.norm1 = nn.BatchNorm2d(cin) if norm == "batch" and not first else nn.Identity()
        self.norm2 = nn.BatchNorm2d(cout) if norm == "batch" else nn.Identity()
        self.shortcut = sn(nn.Conv2d(cin, cout, 1), spectral) if (cin != cout or down) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(self.norm1(x))
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        s = x
        if self.first:  # pool before the 1x1 conv on raw pixels, as in SNGAN's optimized block
            s = self.shortcut(F.avg_pool2d(s, 2) if self.down else s)
        else:
            s = self.shortcut(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        return (F.avg_pool2d(h, 2) if self.down else h) + s


class Discriminator(nn.Module):
    def __init__(
        self,
        image_size: int,
        channels: int,
        width: int = 64,
        num_classes: int = 0,
        conditioning: str = "projection",
        spectral: bool = False,
        norm: str = "none",
    ):
        super().__init__()
        downs = num_blocks(image_size)
        blocks = [DBlock(channels, width, True, True, spectral, norm)]
        blocks += [DBlock(width, width, True, False, spectral, norm) for _ in range(downs - 1)]
        blocks += [DBlock(width, width, False, False, spectral, norm)]
        self.blocks = nn.Sequential(*blocks)
        self.head = DiscriminatorHead(width, num_classes, conditioning, spectral)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling
        return self.head(h, labels)
