"""Architecture registry: a new family is added here, in one place."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.utils import parametrize

from pipeline.config import ModelConfig
from pipeline.models import dcgan, resnet
from pipeline.models.layers import ConditionalBatchNorm2d


def _weight(m: nn.Module):
    return m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight


def _init(module: nn.Module, conv_init: Callable) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            conv_init(_weight(m))
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            m.reset_embeddings()  # start as plain BN: scale 1, shift 0 for every class


def init_dcgan(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, N(1, 0.02) norm scales."""
    _init(module, lambda w: nn.init.normal_(w, 0.0, 0.02))


def init_resnet(module: nn.Module) -> None:
    """SNGAN initialisation: Xavier-uniform weights."""
    _init(module, nn.init.xavier_uniform_)


# arch -> (generator class, discriminator class, weight init)
ARCHS = {
    "dcgan": (dcgan.Generator, dcgan.Discriminator, init_dcgan),
    "resnet": (resnet.Generator, resnet.Discriminator, init_resnet),
}


def build_generator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int = 0) -> nn.Module:
    """G for `cfg.arch`, initialised; `num_classes` > 0 only for conditional models."""
    make_g, _, init = ARCHS[cfg.arch]
    g = make_g(cfg.latent_dim, image_size, channels, cfg.g_channels, num_classes if cfg.conditional else 0)
    init(g)
    return g


def build_discriminator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int = 0) -> nn.Module:
    _, make_d, init = ARCHS[cfg.arch]
    d = make_d(
        image_size,
        channels,
        cfg.d_channels,
        num_classes if cfg.conditional else 0,
        conditioning=cfg.conditioning,
        spectral=cfg.spectral_norm,
        norm=cfg.d_norm,
    )
    init(d)
    return d
