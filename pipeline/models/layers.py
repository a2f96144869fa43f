"""Building blocks shared by the architectures: optional spectral norm, conditional batch norm."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalisation (Miyato et al., 2018) of a layer's weight when `enabled`."""
    return spectral_norm(module) if enabled else module


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift come from the class label (plain BN when unconditional)."""

    def __init__(self, channels: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes:
            self.gamma = nn.Embedding(num_classes, channels)
            self.beta = nn.Embedding(num_classes, channels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if self.num_classes:
            if labels is None:
                raise ValueError("conditional generator needs labels")
            h = h * self.gamma(labels)[:, :, None, None] + self.beta(labels)[:, :, None, None]
        return h

    def reset_embeddings(self) -> None:
        if self.num_classes:
            nn.init.ones_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)


class DiscriminatorHead(nn.Module):
    """Turns D's pooled features into (adversarial logit, class logits or None).

    conditioning "projection": logit += <embed(y), h> (Miyato & Koyama, 2018);
    "acgan": an auxiliary classifier predicts the class (Odena et al., 2017), labels unused.
    """

    def __init__(self, features: int, num_classes: int, conditioning: str, spectral: bool):
        super().__init__()
        self.linear = sn(nn.Linear(features, 1), spectral)
        self.conditioning = conditioning if num_classes else "none"
        if self.conditioning == "projection":
            self.embed = sn(nn.Embedding(num_classes, features), spectral)
        elif self.conditioning == "acgan":
            self.classifier = sn(nn.Linear(features, num_classes), spectral)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.linear(h).squeeze(1)
        if self.conditioning == "projection":
            if labels is None:
                raise ValueError("conditional discriminator needs labels")
            out = out + (self.embed(labels) * h).sum(1)
        if self.conditioning == "acgan":
            return out, self.classifier(h)
        return out, None
