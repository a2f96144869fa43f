"""The architecture registry: how to build every family's networks, image generation and style
transfer alike.

A new family is its entry in the plug-in catalog (`pipeline/catalog.py`: task, objective, options),
one module beside this file and one line in `ARCHS`. The model artifact
(spec, save, load) is in `pipeline.models.artifact`; stages that only use a trained model
(evaluate, export) import from here, never from `pipeline.training`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from pipeline import catalog
from pipeline.config import ConfigError, ModelConfig
from pipeline.models import dcgan, r3gan, resnet, stylegan2, translation
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


def init_stylegan2(module: nn.Module) -> None:
    """StyleGAN2's equalised layers initialise themselves (N(0, 1), scaled at run time); only
    the shared discriminator head's plain layers are set here (Xavier-uniform)."""
    _init(module, nn.init.xavier_uniform_)


def classes_of(cfg: ModelConfig, num_classes: int) -> int:
    """The classes the networks are built for: the data's for conditional models and for classes
    drawn from the noise, none otherwise."""
    return num_classes if cfg.conditional or (cfg.noise_classes and num_classes > 1) else 0


class ClassesFromNoise(nn.Module):
    """An unconditional G made of a conditional one: each sample's class is the argmax of the
    first `num_classes` entries of its z (iid normal, so every class is equally likely), and
    the labels a caller passes are ignored. Trained with a class-conditional D on those classes,
    it keeps each sample within one class, while its interface stays z -> images."""

    def __init__(self, inner: nn.Module, num_classes: int):
        super().__init__()
        self.inner, self.num_classes, self.latent_dim = inner, num_classes, inner.latent_dim

    @staticmethod
    def classes(z: torch.Tensor, num_classes: int) -> torch.Tensor:
        return z[:, :num_classes].argmax(1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        return self.inner(z, self.classes(z, self.num_classes), *args, **kwargs)

    # StyleGAN2's parts (truncation, w per layer, synthesis), for the objective and the export
    @property
    def truncation(self) -> bool:
        return bool(getattr(self.inner, "truncation", False))

    @property
    def num_ws(self) -> int:
        return self.inner.num_ws

    def ws(self, z: torch.Tensor, labels: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        return self.inner.ws(z, self.classes(z, self.num_classes), *args, **kwargs)

    def synthesis(self, *args, **kwargs) -> torch.Tensor:
        return self.inner.synthesis(*args, **kwargs)


def _adversarial_g(make: Callable) -> Callable:
    def build(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
        return make(cfg.latent_dim, image_size, channels, cfg.g_channels, classes_of(cfg, num_classes))

    return build


def _adversarial_d(make: Callable) -> Callable:
    def build(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
        return make(image_size, channels, cfg.d_channels, classes_of(cfg, num_classes),
                    conditioning=cfg.conditioning, spectral=cfg.spectral_norm, norm=cfg.d_norm)  # fmt: skip

    return build


def _stylegan2_g(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
    return stylegan2.Generator(cfg.latent_dim, image_size, channels, cfg.g_channels,
                               classes_of(cfg, num_classes), cfg.mapping_layers)  # fmt: skip


def _stylegan2_d(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
    return stylegan2.Discriminator(image_size, channels, cfg.d_channels, classes_of(cfg, num_classes),
                                   cfg.conditioning, cfg.mbstd_group)  # fmt: skip


def _r3gan_g(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
    if cfg.backbone == "dcgan":  # initialised here: r3gan.init leaves modules other than its own alone
        g = dcgan.Generator(cfg.latent_dim, image_size, channels, cfg.g_channels, classes_of(cfg, num_classes))
        init_dcgan(g)
        return g
    return r3gan.Generator(cfg.latent_dim, image_size, channels, cfg.g_channels, classes_of(cfg, num_classes),
                           cfg.stage_blocks, cfg.expansion, cfg.group_channels)  # fmt: skip


def _r3gan_d(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
    if cfg.backbone == "dcgan":  # no normalisation: R1 and R2 penalise each sample's gradient
        d = dcgan.Discriminator(image_size, channels, cfg.d_channels, classes_of(cfg, num_classes),
                                conditioning=cfg.conditioning, spectral=False, norm="none")  # fmt: skip
        init_dcgan(d)
        return d
    return r3gan.Discriminator(image_size, channels, cfg.d_channels, classes_of(cfg, num_classes), cfg.conditioning,
                               cfg.stage_blocks, cfg.expansion, cfg.group_channels)  # fmt: skip


def _translator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
    """cfg.translator_net: CycleGAN's ResNet G (cyclegan's reference default) or pix2pix's U-Net."""
    if cfg.translator_net == "resnet":
        return translation.ResnetGenerator(channels, channels, width=cfg.g_channels, n_blocks=cfg.n_blocks)
    return translation.UnetGenerator(channels, channels, image_size, width=cfg.g_channels, dropout=cfg.dropout,
                                     levels=cfg.unet_levels)  # fmt: skip


def _patch_discriminator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int) -> nn.Module:
    return translation.PatchDiscriminator(channels, image_size, width=cfg.d_channels, n_layers=cfg.d_layers)


@dataclass(frozen=True)
class Family:
    """How to build one architecture's networks (what else is known of it: `pipeline/catalog.py`).
    A style-transfer family's D takes `channels` = what it judges."""

    generator: Callable[[ModelConfig, int, int, int], nn.Module]
    discriminator: Callable[[ModelConfig, int, int, int], nn.Module]
    init: Callable[[nn.Module], None]


ARCHS = {
    "dcgan": Family(_adversarial_g(dcgan.Generator), _adversarial_d(dcgan.Discriminator), init_dcgan),
    "resnet": Family(_adversarial_g(resnet.Generator), _adversarial_d(resnet.Discriminator), init_resnet),
    "stylegan2": Family(_stylegan2_g, _stylegan2_d, init_stylegan2),
    "r3gan": Family(_r3gan_g, _r3gan_d, r3gan.init),
    "cyclegan": Family(_translator, _patch_discriminator, translation.init_translation),
    "pix2pix": Family(_translator, _patch_discriminator, translation.init_translation),
}


def directions(arch: str) -> list[str]:
    """The translators a style-transfer family trains and exports, by direction."""
    return list(catalog.arch(arch).directions)


def build_generator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int = 0) -> nn.Module:
    """G of `cfg.arch`, initialised; `num_classes` > 0 only for conditional models. For a
    style-transfer family: one translator (A and B have the same number of channels)."""
    family = ARCHS[cfg.arch]
    g = family.generator(cfg, image_size, channels, num_classes)
    family.init(g)
    if classes_of(cfg, num_classes) and cfg.noise_classes:
        if cfg.latent_dim < num_classes:
            raise ConfigError(f"model.classes_from_noise draws one of {num_classes} classes from z's first "
                              f"{num_classes} entries: model.latent_dim ({cfg.latent_dim}) is too small")  # fmt: skip
        g = ClassesFromNoise(g, num_classes)
    return g


def build_discriminator(cfg: ModelConfig, image_size: int, channels: int, num_classes: int = 0) -> nn.Module:
    """D of `cfg.arch`, initialised; `channels` is what D judges (pix2pix: input and output stacked)."""
    family = ARCHS[cfg.arch]
    d = family.discriminator(cfg, image_size, channels, num_classes)
    family.init(d)
    return d
