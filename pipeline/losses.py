"""Adversarial losses and regularisers, written on D's raw logits.

One registry (LOSSES): each adversarial loss is a `Loss` object that carries everything an
objective needs of it: its D loss and G loss (the G loss sees D's logits of the real images too,
which relativistic losses compare against), whether it adds the gradient penalty, and how D's
logits read as scores. Objectives never test a loss by name. The torch-free facts (the names
params accept, which losses penalise each sample's gradient) are in `pipeline/catalog.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline import catalog


def nonsaturating_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))): binary cross-entropy with real = 1, fake = 0."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def nonsaturating_g(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """-log D(G(z)) (Goodfellow et al., 2014): strong gradients while D still rejects the fakes."""
    return F.softplus(-fake).mean()


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - D(x)) + max(0, 1 + D(G(z))) (Lim & Ye, 2017; SNGAN, BigGAN)."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    return -fake.mean()


def least_squares_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """LSGAN (Mao et al., 2017): (D(x) - 1)^2 / 2 + D(G(z))^2 / 2."""
    return 0.5 * ((real - 1.0) ** 2).mean() + 0.5 * (fake**2).mean()


def least_squares_g(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    return 0.5 * ((fake - 1.0) ** 2).mean()


def wasserstein_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Critic loss of WGAN (Arjovsky et al., 2017): D(G(z)) - D(x); pair with a gradient penalty."""
    return fake.mean() - real.mean()


def wasserstein_g(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    return -fake.mean()


def relativistic_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The relativistic pairing loss (RpGAN; Jolicoeur-Martineau, 2019; R3GAN, Huang et al., 2024):
    -log sigmoid(D(x) - D(G(z))), each real paired with one fake of the same micro-batch."""
    return F.softplus(fake - real).mean()


def relativistic_g(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigmoid(D(G(z)) - D(x)): G pushes each fake above its paired real."""
    if real is None:
        raise ValueError("the relativistic G loss needs D's logits of the real images")
    return F.softplus(real - fake).mean()


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class Loss:
    """One adversarial loss, to be minimised. `d(real_logits, fake_logits)`; `g(fake_logits,
    real_logits)`, where real_logits is None unless `needs_real_for_g`. The flags come from the
    catalog entry of the same name."""

    name: str
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

    @property
    def info(self) -> catalog.LossInfo:
        return catalog.LOSSES[self.name]

    @property
    def gradient_penalty(self) -> bool:
        """Adds WGAN-GP's penalty on interpolates (weighted by train.gp_weight)."""
        return self.info.per_sample_penalty

    @property
    def needs_real_for_g(self) -> bool:
        return self.info.needs_real_for_g

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """D's logits as logged (train/D_real, train/D_fake): probabilities where they are log-odds."""
        return (torch.sigmoid if self.info.probability else _identity)(logits)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("nonsaturating", nonsaturating_d, nonsaturating_g),
        Loss("hinge", hinge_d, hinge_g),
        Loss("lsgan", least_squares_d, least_squares_g),
        Loss("wgan-gp", wasserstein_d, wasserstein_g),
        Loss("relativistic", relativistic_d, relativistic_g),
    )
}


def gradient_penalty(
    d: Callable, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): (||grad D(x_hat)|| - 1)^2 on random interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=generator.device).to(real.device, real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x_hat, labels)[0].sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def zero_centred_penalty(inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """||grad_x D(x)||^2 averaged over the batch, for D's `logits` of `inputs` (which require grad):
    the zero-centred gradient penalty, pushing D flat around the samples. Differentiable (create_graph)."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def _penalty_at(d: Callable, samples: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    x = samples.detach().requires_grad_(True)
    return zero_centred_penalty(x, d(x, labels)[0])


def r1_penalty(d: Callable, real: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """R1 (Mescheder et al., 2018): the zero-centred penalty on real data."""
    return _penalty_at(d, real, labels)


def r2_penalty(d: Callable, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """R2: the same on generated data; with R1, what makes the relativistic loss converge locally
    (R3GAN, Huang et al., 2024)."""
    return _penalty_at(d, fake, labels)


def cycle_loss(real: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """CycleGAN's cycle consistency: mean |F(G(x)) - x|."""
    return (reconstructed - real).abs().mean()


def identity_loss(real: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """CycleGAN's identity term: mean |G(y) - y| for y already in G's target domain. The
    loop weights it by lambda_identity * lambda_cycle, as the reference does."""
    return (same - real).abs().mean()


def path_lengths(synthesis: Callable[[torch.Tensor], torch.Tensor], ws: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """StyleGAN2's path lengths: ||J_w^T y|| per sample, with J_w the Jacobian of the image with
    respect to the ws [N, L, D] and y random images scaled by 1/sqrt(pixels), averaged over
    the L layers' w (Karras et al., 2020, section 3.2). Differentiable (create_graph)."""
    images = synthesis(ws)
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(images.device, images.dtype)
    noise = noise / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    return grad.float().square().sum(2).mean(1).sqrt()


def path_length_penalty(lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(||J_w^T y|| - a)^2 with `a` the running mean of path lengths: pushes every direction of w
    to change the image by the same amount."""
    return (lengths - target).square().mean()
