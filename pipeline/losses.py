"""Adversarial losses, written on D's raw logits. One registry: add a loss in one place."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossPair = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def nonsaturating_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), i.e. binary cross-entropy with real=1, fake=0."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def nonsaturating_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): the non-saturating G loss of Goodfellow et al. (strong gradients early on)."""
    return F.softplus(-fake_logits).mean()


LOSSES: dict[str, LossPair] = {
    "nonsaturating": (nonsaturating_d, nonsaturating_g),
}
