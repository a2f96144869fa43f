"""Exponential moving average of G's weights, the model that is evaluated and exported."""

from __future__ import annotations

import copy

import torch
from torch import nn


def decay_per_step(ema_decay: float, ema_kimg: float | None, batch_size: int) -> float:
    """The EMA's decay per step: `ema_kimg`, a half-life in thousands of images (StyleGAN's form),
    when given, else `ema_decay` as it is."""
    return 0.5 ** (batch_size / (ema_kimg * 1000)) if ema_kimg else ema_decay


def make_ema(g: nn.Module) -> nn.Module:
    ema = copy.deepcopy(g).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, g: nn.Module, step: int, decay: float) -> None:
    """ema = beta * ema + (1 - beta) * g, with beta ramped up early so the first, poor
    weights do not dominate for thousands of steps; buffers (BatchNorm statistics) are copied."""
    beta = min(decay, (1.0 + step) / (10.0 + step))
    for pe, pg in zip(ema.parameters(), g.parameters(), strict=True):
        pe.lerp_(pg.detach(), 1.0 - beta)
    for be, bg in zip(ema.buffers(), g.buffers(), strict=True):
        be.copy_(bg)
