"""The plug-in catalog: every architecture and adversarial loss, the facts the rest of the code asks
about them, in one torch-free table.

`pipeline/config.py` reads it for the allowed values of `model.arch` and `train.loss` and for the
combinations it refuses; the model registry (`pipeline/models/__init__.py`), the objectives
(`pipeline/training/objectives/__init__.py`), the losses (`pipeline/losses.py`) and the model
artifact read it for what they would otherwise spell by name. tests/test_catalog.py checks that
the registries and this table agree. Adding an architecture: an `Arch` here, a module in
`pipeline/models/`, one `Family` line in `ARCHS` (docs/architecture.md, "Where to add").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Task = Literal["generate", "translate"]


@dataclass(frozen=True)
class Arch:
    """One architecture family. `refuses` maps an option it cannot honour to the reason, said in
    the refusal: "spectral_norm" (model.spectral_norm), "per_sample_penalty" (a loss that
    penalises each sample's gradient, which a D that mixes samples breaks) and "r1_gamma" (lazy R1)."""

    task: Task
    objective: str  # the training objective (a key of OBJECTIVES)
    noise_classes: bool  # takes model.classes_from_noise (unconditional G, class-conditional D)
    batch_norm_d: bool = False  # D normalises with model.d_norm (batch norm mixes a batch's samples)
    own_keys: tuple[str, ...] = ()  # model.* keys only this family reads: left out of other families' specs
    refuses: dict[str, str] = field(default_factory=dict)
    directions: tuple[str, ...] = ()  # translate: the translators trained and exported, by direction
    translator: str | None = None  # translate: the reference's translator network (model.translator: null)
    pairs: bool = False  # translate: learns from aligned pairs only
    loss: str | None = None  # the one adversarial loss (train.loss) its objective trains with; None: any


@dataclass(frozen=True)
class LossInfo:
    """What config and the objectives need to know of an adversarial loss (its maths: pipeline/losses.py)."""

    summary: str
    per_sample_penalty: bool = False  # adds WGAN-GP's gradient penalty (train.gp_weight) on interpolates
    probability: bool = False  # D's logits are log-odds: logged as probabilities (sigmoid)
    needs_real_for_g: bool = False  # G's loss reads D's logits of real images too (relativistic losses)


_TRANSLATOR_KEYS = ("translator",)

ARCHITECTURES: dict[str, Arch] = {
    "dcgan": Arch(task="generate", objective="gan", noise_classes=True, batch_norm_d=True),
    "resnet": Arch(task="generate", objective="gan", noise_classes=True, batch_norm_d=True),
    "stylegan2": Arch(
        task="generate",
        objective="stylegan2",
        noise_classes=True,
        own_keys=("mapping_layers", "mbstd_group"),
        refuses={
            "spectral_norm": "its layers use the equalised learning rate",
            "per_sample_penalty": "minibatch standard deviation",
        },
    ),
    "r3gan": Arch(
        task="generate",
        objective="r3gan",
        noise_classes=True,
        own_keys=("backbone", "stage_blocks", "expansion", "group_channels"),
        refuses={
            "spectral_norm": "it has no normalisation: R1 and R2 keep D smooth",
            "r1_gamma": "applies R1 and R2 at every step, weighted by train.r3gan_gamma",
        },
        loss="relativistic",
    ),
    "cyclegan": Arch(
        task="translate",
        objective="cyclegan",
        noise_classes=False,
        own_keys=_TRANSLATOR_KEYS,
        directions=("AB", "BA"),
        translator="resnet",
    ),
    "pix2pix": Arch(
        task="translate",
        objective="pix2pix",
        noise_classes=False,
        own_keys=_TRANSLATOR_KEYS,
        directions=("AB",),
        translator="unet",
        pairs=True,
    ),
}

LOSSES: dict[str, LossInfo] = {
    "nonsaturating": LossInfo("-log D(G(z)) for G, binary cross-entropy for D (Goodfellow et al.)", probability=True),
    "hinge": LossInfo("hinge loss (SNGAN, BigGAN)"),
    "lsgan": LossInfo("least squares (Mao et al.; CycleGAN's reference)"),
    "wgan-gp": LossInfo("Wasserstein critic with a gradient penalty (Gulrajani et al.)", per_sample_penalty=True),
    "relativistic": LossInfo("relativistic pairing, RpGAN (Jolicoeur-Martineau; R3GAN)", needs_real_for_g=True),
}


def arch(name: str) -> Arch:
    return ARCHITECTURES[name]


def names(task: Task) -> list[str]:
    """The architectures of one task, in catalog order."""
    return [n for n, a in ARCHITECTURES.items() if a.task == task]


def either(items: list[str]) -> str:
    """'a', 'a or b', 'a, b or c': the choices in a message."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def spec_exclusions(name: str) -> set[str]:
    """model.* keys another family owns: the model spec of `name` leaves them out, so adding a family
    (and its keys) does not change the artifacts of the others."""
    own = set(ARCHITECTURES[name].own_keys)
    return {k for a in ARCHITECTURES.values() for k in a.own_keys} - own
