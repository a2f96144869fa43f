"""Augmentation: DiffAugment's probability, the ADA controller, flips."""

import pytest
import torch

from pipeline.training.augment import AdaptiveProbability, DiffAugment, random_hflip


def test_probability_zero_is_the_identity_and_one_augments_every_image():
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    assert torch.equal(DiffAugment("color,cutout", p=0.0)(x, torch.Generator().manual_seed(0)), x)
    full = DiffAugment("color", p=1.0)(x, torch.Generator().manual_seed(0))
    assert all(not torch.equal(a, b) for a, b in zip(full, x, strict=True))


def test_partial_probability_augments_some_images_and_leaves_the_rest_exact():
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    out = DiffAugment("color", p=0.5)(x, torch.Generator().manual_seed(1))
    same = [torch.equal(a, b) for a, b in zip(out, x, strict=True)]
    assert 10 < sum(same) < 54  # about half untouched, the others changed


def test_ada_raises_p_while_d_is_overconfident_and_lowers_it_otherwise():
    ada = AdaptiveProbability(target=0.6, interval=2, kimg=0.1, batch_size=10)  # step 10 * 2 / 100 = 0.2
    for step in range(1, 5):
        ada.observe(torch.ones(10))  # D says "real" to every real image: r_t = 1 > 0.6
        ada.maybe_update(step)
    assert ada.last_rt == 1.0 and ada.p == pytest.approx(0.4)  # two adjustments of 0.2
    for step in range(5, 15):
        ada.observe(-torch.ones(10))  # r_t = -1 < 0.6
        ada.maybe_update(step)
    assert ada.p == 0.0  # clamped at 0
    state = ada.state_dict()
    again = AdaptiveProbability(0.6, 2, 0.1, 10)
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_hflip_mirrors_about_half_the_images_exactly():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(40, 1, 1, 1)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, x[0].flip(2)) for o in out]
    kept = [torch.equal(o, x[0]) for o in out]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 8 < sum(flipped) < 32
