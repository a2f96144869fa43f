"""Mode counting on stacked digits (`data.source: stacked`): the countable test of mode collapse.

Each image holds a digit in each of its 3 channels, so it belongs to one of 10^3 = 1,000 modes.
The evaluator trained on single channels (pipeline/metrics/evaluator.py, `PerChannel`) reads each
channel's digit; the mode is the triple. Two numbers, as the literature reports them (VEEGAN,
PacGAN, R3GAN):
  modes    how many of the 1,000 modes at least one sample falls in;
  mode_kl  the reverse KL divergence KL(p || u) of the samples' mode histogram p from the uniform u
           the real images follow: sum p log(p * 1000); 0 when every mode is equally frequent,
           log(1000) = 6.9 when every sample is the same mode.
Both are measured on MODE_SAMPLES samples, the count the literature uses, so the numbers compare
with published ones; a finite sample alone gives a uniform generator a KL of about
(modes - 1) / (2 x samples) = 0.019. Real images score the same way, restacked from held-out digits
(`restack`), so the classifier's own errors are in the floor too.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from pipeline.dataset import to_float
from pipeline.runtime import device_of

MODE_SAMPLES = 26_000  # as in VEEGAN, PacGAN and R3GAN's Stacked MNIST tables


def mode_ids(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each image's mode from its channels' classes [N, C]: the classes as the digits of a base-K number."""
    weights = num_classes ** torch.arange(classes.shape[1] - 1, -1, -1, device=classes.device)
    return (classes.long() * weights).sum(1)


def mode_stats(modes: torch.Tensor, num_modes: int) -> dict[str, float]:
    """`modes` covered (distinct values) and the reverse KL of their histogram from uniform over `num_modes`."""
    counts = torch.bincount(modes.long(), minlength=num_modes).double()
    p = counts[counts > 0] / counts.sum()
    return {"modes": int((counts > 0).sum()), "mode_kl": float((p * (p * num_modes).log()).sum())}


@torch.inference_mode()
def channel_classes_of(net: torch.nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """The per-channel evaluator's class of every channel [N, C] of uint8 or [-1, 1] float images. It runs a
    channels-last copy of `net`: on a CPU its 32-px convolutions and poolings take 0.6x the time that way, and
    26,000 samples are 78,000 single-channel images."""
    device, out = device_of(net), []
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = to_float(np.asarray(chunk)) if isinstance(chunk, np.ndarray) else torch.as_tensor(chunk).float()
        out.append(fast(x.to(device).contiguous(memory_format=torch.channels_last)).argmax(-1).cpu())
    return torch.cat(out)


def restack(classes: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The channels' classes [n, C] of `n` real stacked images made afresh from real ones whose channels'
    classes are `classes` [M, C]: channel k of each is channel k of an image drawn at random, independently
    per channel, so their modes are those of the digits' own classes. (The classes of a channel do not depend
    on the others, so restacking the classes is restacking the images, without classifying 26,000 again.)"""
    rng = np.random.default_rng(seed)
    picks = torch.from_numpy(rng.integers(len(classes), size=(n, classes.shape[1])))
    return torch.stack([classes[picks[:, k], k] for k in range(classes.shape[1])], dim=1)
