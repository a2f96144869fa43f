"""FID and KID (torchmetrics), precision, recall, density and coverage (prdc) between two sets of features.

Features are extracted once per image set and passed through an identity module, so the
real reference set is embedded once and reused for every comparison (model, floor,
ceiling). torchmetrics accepts a custom feature module when it has an integer
`num_features`; without it, it probes with a uint8 299x299 image and fails.
"""

from __future__ import annotations

import warnings

import prdc.prdc as _prdc_module
import torch
from prdc import compute_prdc
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

# prdc prints the two set sizes on every call. Under Prefect (log_prints) a print becomes a log record
# whatever sys.stdout is, so the package's own name `print` is pointed at a function that says nothing.
_prdc_module.print = lambda *args, **kwargs: None


class PrecomputedFeatures(nn.Module):
    """Identity 'extractor': the inputs handed to torchmetrics already are features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance between feature sets [N, F] and [M, F] (torchmetrics, in float64)."""
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def fid_kid(
    real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int = 100, kid_subsets: int = 100, seed: int = 0
) -> dict[str, float]:
    """FID, and KID mean/std over random subsets, between feature sets [N, F] and [M, F].

    KID's subset size is clipped to the smaller set. Its subsets are drawn from torch's
    global RNG, so it is seeded here and the result is reproducible.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be [N, F] with equal F, got {tuple(real.shape)} and {tuple(fake.shape)}")
    dim = real.shape[1]
    real, fake = real.double(), fake.double()
    subset = min(kid_subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": they are small here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=PrecomputedFeatures(dim), subsets=kid_subsets, subset_size=subset)
    kid.set_dtype(torch.float64)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": fid(real, fake), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def prdc(real: torch.Tensor, fake: torch.Tensor, nearest_k: int = 5) -> dict[str, float]:
    """Precision and recall (Kynkäänniemi et al. 2019: the share of fakes inside the real k-NN
    manifold, and of reals inside the fake one), density and coverage (Naeem et al. 2020), by
    the authors' `prdc` package. Precision: how many samples look real; recall: how much of the
    real data's variety the samples reach."""
    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(f"precision/recall need more than {nearest_k} images per set, got {len(real)} and {len(fake)}")
    scores = compute_prdc(real.double().numpy(), fake.double().numpy(), nearest_k)
    return {name: float(value) for name, value in scores.items()}
