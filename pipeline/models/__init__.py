"""Architecture registry: a new family is added here, in one place."""

from __future__ import annotations

from torch import nn

from pipeline.config import ModelConfig
from pipeline.models import dcgan

# arch -> (generator factory, discriminator factory, weight init)
ARCHS = {
    "dcgan": (dcgan.Generator, dcgan.Discriminator, dcgan.init_weights),
}


def build_generator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int = 0) -> nn.Module:
    """G for `cfg.arch`, initialised; `num_classes` > 0 only for conditional models."""
    make_g, _, init = ARCHS[cfg.arch]
    g = make_g(cfg.latent_dim, image_size, channels, cfg.g_channels, num_classes if cfg.conditional else 0)
    init(g)
    return g


def build_discriminator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int = 0) -> nn.Module:
    _, make_d, init = ARCHS[cfg.arch]
    d = make_d(image_size, channels, cfg.d_channels, num_classes if cfg.conditional else 0)
    init(d)
    return d
