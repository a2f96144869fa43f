"""The latents of seeds and the walks between them, in NumPy, so that the ONNX side (`ganpipe generate
--seeds`, `ganpipe interpolate`) and the train stage's walk picture draw the same z for the same seed.

A seed's z comes from NumPy's generator seeded with it, as in OnnxGenerator.generate. Walks run along
the great circle between two z (spherical interpolation, as StyleGAN's and BigGAN's tools do for
Gaussian z: a straight line would pass through lower-norm z that the generator never saw).
"""

from __future__ import annotations

import itertools

import numpy as np


def seed_latents(seeds: list[int], latent_dim: int) -> np.ndarray:
    """[len(seeds), latent_dim] float32: each seed's z, the one `ganpipe generate -n 1 --seed S` draws."""
    return np.concatenate([np.random.default_rng(s).standard_normal((1, latent_dim), dtype=np.float32)
                           for s in seeds])  # fmt: skip


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points at fractions `t` along the great circle from `a` to `b` (straight where they are parallel)."""
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    angle = np.arccos(np.clip(cos, -1.0, 1.0))
    t = t[:, None]
    if angle < 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)


def walk(zs: np.ndarray, steps: int) -> np.ndarray:
    """[(len(zs) - 1) * steps + 1, latent_dim] float32: `steps` points per leg from each z to the next,
    each z itself at its place, the last one closing the walk."""
    legs = [slerp(a, b, np.arange(steps) / steps) for a, b in itertools.pairwise(zs)]
    return np.concatenate([*legs, zs[-1:]]).astype(np.float32)
