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
    ema_params, g_params = list(ema.parameters()), [p.detach() for p in g.parameters()]
    if len(ema_params) != len(g_params):
        raise ValueError("EMA and model have different parameters")
    torch._foreach_lerp_(ema_params, g_params, 1.0 - beta)  # a few kernels instead of one per tensor
    ema_buffers, g_buffers = list(ema.buffers()), list(g.buffers())
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, g_buffers)
