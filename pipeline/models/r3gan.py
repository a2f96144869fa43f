"""R3GAN's modernised ResNet (Huang et al., "The GAN is dead; long live the GAN! A Modern Baseline
GAN", NeurIPS 2024), written from the paper, sized for small images on a few CPU cores.

Both networks are stacks of stages, one per resolution from 4x4 to the image size, with no
normalisation layer anywhere: the objective's zero-centred penalties (R1 and R2) keep training
stable instead.
- A residual block is an inverted bottleneck: 1x1 conv expanding the width by model.expansion,
  leaky ReLU (0.2), a grouped 3x3 conv (model.group_channels channels per group), leaky ReLU, a
  1x1 conv back to the width; added to its input. model.stage_blocks blocks per stage.
- Fix-up style initialisation: the last conv of every residual branch starts at zero (each block
  starts as the identity), and the two before it draw N(0, g / sqrt(fan_in)) with g the leaky
  ReLU's gain times L^(-1/4), L the blocks in the network, so the residual sum's variance does not
  grow with depth. Every other layer draws with gain 1.
- Resampling is filtered: 2x up by the bilinear [1, 3, 3, 1] filter (a depthwise transposed
  convolution), 2x down by the same filter and stride 2; a 1x1 conv changes the width where
  stages differ (at the lower resolution of the two, where it is cheaper).
- G: z, concatenated with a class embedding for class-conditional models, scales a learned 4x4
  basis per channel; a 1x1 conv to the image channels and tanh (the paper's G ends linear; tanh
  keeps the ONNX contract's [-1, 1]). D: a 1x1 conv from the image, the stages down to 4x4, a
  depthwise 4x4 conv to one feature per channel and the shared linear head (projection: the
  class embedding's dot product with the features; or ACGAN).
- Widths: model.g_channels (d_channels) at the image size, doubled at each halving, at most 4x.

On the CPU it does not pay per step: one torch thread, 32-px digits, batch 64, a whole training step
(R1 and R2 included) ran 1.47 steps/s at widths 16 against the DCGAN's 26 at the same widths and 3.2
at the default's 64 (docs/models.md, "R3GAN"). So configs/r3gan-digits.yaml trains the DCGAN
networks with the R3GAN objective (model.backbone: dcgan), which at equal training time did better
on stacked and on plain digits; this network stays for more cores, a GPU, and its own study.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.dcgan import num_blocks
from pipeline.models.layers import DiscriminatorHead

SLOPE = 0.2  # leaky ReLU
ACTIVATION_GAIN = math.sqrt(2 / (1 + SLOPE**2))  # keeps N(0, 1/fan_in)-scaled activations' variance at 1
MAX_WIDTH_FACTOR = 4


def widths(image_size: int, base: int) -> list[int]:
    """The width of each stage from 4x4 up to `image_size`: `base` at the image size, doubled at each
    halving, at most MAX_WIDTH_FACTOR x `base`."""
    stages = num_blocks(image_size) + 1
    return [base * min(2 ** (stages - 1 - i), MAX_WIDTH_FACTOR) for i in range(stages)]


def _normal(weight: torch.Tensor, gain: float) -> None:
    fan_in = weight[0].numel()  # in-channels per group x kernel size (Conv2d) or in-features (Linear)
    nn.init.normal_(weight, 0.0, gain / math.sqrt(fan_in))


class Conv(nn.Module):
    """A stride-1 'same' convolution initialised N(0, gain / sqrt(fan_in)) (gain 0: zero)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, groups: int = 1, bias: bool = False, gain: float = 1.0):
        super().__init__()
        self.gain = gain
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=bias)

    def reset(self) -> None:
        if self.gain:
            _normal(self.conv.weight, self.gain)
        else:
            nn.init.zeros_(self.conv.weight)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def group_size(channels: int, per_group: int) -> int:
    """Channels per group of the grouped 3x3 conv: `per_group`, or the largest divisor of `channels`
    below it."""
    per_group = min(per_group, channels)
    while channels % per_group:
        per_group -= 1
    return per_group


class ResidualBlock(nn.Module):
    """x + project(act(grouped3x3(act(expand(x))))): the inverted bottleneck; no normalisation."""

    def __init__(self, width: int, expansion: int, group_channels: int, total_blocks: int):
        super().__init__()
        hidden = width * expansion
        gain = ACTIVATION_GAIN * total_blocks ** (-1 / 4)  # L^(-1 / (2m - 2)) with m = 3 layers per branch
        self.expand = Conv(width, hidden, 1, bias=True, gain=gain)
        self.spatial = Conv(hidden, hidden, 3, groups=hidden // group_size(hidden, group_channels), bias=True,
                            gain=gain)  # fmt: skip
        self.project = Conv(hidden, width, 1, gain=0.0)  # zero: the block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.expand(x), SLOPE)
        h = F.leaky_relu(self.spatial(h), SLOPE)
        return x + self.project(h)


class Resample(nn.Module):
    """2x up, bilinear: the [1, 3, 3, 1] filter of the paper's upsampler (up to the border, where it
    repeats the edge instead of padding with zeros); 2x down by 2x2 averaging, where the paper filters
    with the same [1, 3, 3, 1] and strides (stylegan2.py's choice too). PyTorch's own ops, exported
    as single ONNX nodes; a whole step measured the same as with the paper's filters as depthwise
    convolutions (one thread, widths 16 and 32: within the runs' noise of 10%), and faster than
    with them as one convolution over every channel alone (0.57 against 0.44 steps/s at widths 32)."""

    def __init__(self, up: bool):
        super().__init__()
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.avg_pool2d(x, 2)


def _stage(width: int, cfg: tuple[int, int, int], total: int) -> list[nn.Module]:
    blocks, expansion, group_channels = cfg
    return [ResidualBlock(width, expansion, group_channels, total) for _ in range(blocks)]


class Generator(nn.Module):
    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int = 64, num_classes: int = 0,
                 stage_blocks: int = 1, expansion: int = 2, group_channels: int = 16):  # fmt: skip
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        ws = widths(image_size, width)
        block_cfg, total = (stage_blocks, expansion, group_channels), stage_blocks * len(ws)
        if num_classes:
            self.embed = nn.Embedding(num_classes, latent_dim)  # the class, concatenated with z
        self.to_basis = nn.Linear(latent_dim * (2 if num_classes else 1), ws[0], bias=False)
        self.basis = nn.Parameter(torch.empty(ws[0], 4, 4))
        layers: list[nn.Module] = _stage(ws[0], block_cfg, total)
        for cin, cout in pairwise(ws):
            if cin != cout:
                layers.append(Conv(cin, cout, 1))
            layers += [Resample(up=True), *_stage(cout, block_cfg, total)]
        self.layers = nn.Sequential(*layers)
        self.to_image = Conv(ws[-1], channels, 1)

    def reset(self) -> None:
        nn.init.normal_(self.basis)
        _normal(self.to_basis.weight, 1.0)
        if self.num_classes:
            nn.init.normal_(self.embed.weight)  # as z's entries: N(0, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if labels is None:
                raise ValueError("conditional generator needs labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.basis.unsqueeze(0) * self.to_basis(z)[:, :, None, None]
        return torch.tanh(self.to_image(self.layers(h)))


class Discriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int = 64, num_classes: int = 0,
                 conditioning: str = "projection", stage_blocks: int = 1, expansion: int = 2,
                 group_channels: int = 16):  # fmt: skip
        super().__init__()
        ws = widths(image_size, width)[::-1]  # from the image size down to 4x4
        block_cfg, total = (stage_blocks, expansion, group_channels), stage_blocks * len(ws)
        layers: list[nn.Module] = [Conv(channels, ws[0], 1)]
        for cin, cout in pairwise(ws):
            layers += [*_stage(cin, block_cfg, total), Resample(up=False)]
            if cin != cout:
                layers.append(Conv(cin, cout, 1))
        layers += _stage(ws[-1], block_cfg, total)
        self.layers = nn.Sequential(*layers)
        self.to_features = Conv(ws[-1], ws[-1], 4, groups=ws[-1])  # depthwise 4x4 (no padding below)
        self.to_features.conv.padding = (0, 0)
        self.head = DiscriminatorHead(ws[-1], num_classes, conditioning, spectral=False)

    def reset(self) -> None:
        _normal(self.head.linear.weight, 1.0)
        nn.init.zeros_(self.head.linear.bias)
        for name in ("embed", "classifier"):
            layer = getattr(self.head, name, None)
            if layer is not None:
                _normal(layer.weight, 1.0)
                if getattr(layer, "bias", None) is not None:
                    nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.to_features(self.layers(x)).flatten(1)
        return self.head(h, labels)


def init(module: nn.Module) -> None:
    """R3GAN's initialisation (the module docstring), every layer's by its own `reset`."""
    for m in module.modules():
        if isinstance(m, (Conv, Generator, Discriminator)):
            m.reset()
