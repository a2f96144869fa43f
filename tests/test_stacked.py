"""Stacked digits (`data.source: stacked`) and mode counting (pipeline/metrics/modes.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_params
from torch import nn

from pipeline.config import ConfigError
from pipeline.data.prepare import prepare
from pipeline.dataset import channel_classes, channel_labels, load_split
from pipeline.metrics.evaluator import PerChannel, channel_split, load_evaluator, train_evaluator
from pipeline.metrics.modes import MODE_SAMPLES, channel_classes_of, mode_ids, mode_stats, restack
from pipeline.metrics.probe import generate

LEVELS = torch.linspace(-0.9, 0.9, 10)  # the synthetic images: channel k is flat at the level of its digit


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """300 stacked images at 16 px, and the default digits prepared the same way (one channel)."""
    root = tmp_path_factory.mktemp("stacked")
    prepare(tiny_params(data={"source": "stacked", "channels": 3, "stacked": {"count": 300}}).data,
            root / "stacked", root / "stacked.json")  # fmt: skip
    prepare(tiny_params().data, root / "digits", root / "digits.json")
    return root


def test_each_channel_is_a_digit_of_its_label_and_held_out_images_use_held_out_digits_only(stacked):
    digits = {split: load_split(stacked / "digits", split) for split in ("train", "val")}
    owner = {}  # the pixels of every prepared digit -> (its split, its class)
    for split, d in digits.items():
        for img, label in zip(d.images, d.labels, strict=True):
            owner[img.tobytes()] = (split, int(label))
    assert channel_classes(stacked / "stacked") == [str(d) for d in range(10)]
    assert channel_classes(stacked / "digits") == []
    for split in ("train", "val"):
        images, labels = load_split(stacked / "stacked", split).images, channel_labels(stacked / "stacked", split)
        assert images.shape[1:] == (3, 16, 16) and labels.shape == (len(images), 3)
        for img, triple in zip(images, labels, strict=True):
            # resized as a colour image, each channel is exactly the grey digit prepare makes of it
            assert [owner[img[k : k + 1].tobytes()] for k in range(3)] == [(split, int(c)) for c in triple]
    data = load_split(stacked / "stacked", "train")
    assert data.classes == ["stacked"] and len(data.images) == 240  # val_fraction 0.2 of 300
    assert len({img.tobytes() for img in data.images}) == len(data.images)  # no image twice


def test_stacked_digits_need_three_channels():
    with pytest.raises(ConfigError, match=r"data\.channels: 3"):
        tiny_params(data={"source": "stacked"})


def test_the_per_channel_evaluator_learns_each_channels_digit(stacked, tmp_path):
    prepared = stacked / "stacked"
    splits = [channel_split(load_split(prepared, s), channel_labels(prepared, s), channel_classes(prepared))
              for s in ("train", "val")]  # fmt: skip
    assert splits[0].images.shape == (720, 1, 16, 16) and splits[0].num_classes == 10
    cfg = tiny_params(evaluate={"evaluator": {"steps": 150, "batch_size": 64, "features": 32}}).evaluate.evaluator
    res = train_evaluator(cfg, *splits, tmp_path / "ev.pt", progress=False, per_channel=3)
    assert res.val_accuracy > 0.85
    net, spec = load_evaluator(tmp_path / "ev.pt")
    assert isinstance(net, PerChannel) and spec["per_channel"] == 3 and net.num_features == 96
    val = load_split(prepared, "val")
    x = torch.from_numpy(np.array(val.images[:8])).float() / 127.5 - 1
    # features: each channel's own, side by side; classes: each channel's
    assert torch.equal(net.embed(x)[:, 32:64], net.net.embed(x[:, 1:2]))
    truth = torch.from_numpy(channel_labels(prepared, "val"))
    predicted = channel_classes_of(net, val.images)
    assert predicted.shape == truth.shape and (predicted == truth).double().mean() > 0.85


def test_the_evaluate_stage_counts_the_modes_of_samples_and_of_real_stacked_digits(stacked, tmp_path):
    from pipeline.metrics.suite import GENERATION, evaluate, generation_markdown
    from pipeline.training.runner import TrainPaths, train

    prepared = stacked / "stacked"
    params = tiny_params(data={"source": "stacked", "channels": 3, "stacked": {"count": 300}},
                         model={"classes_from_noise": False},
                         evaluate={"evaluator": {"steps": 150, "batch_size": 64, "features": 32}})  # fmt: skip
    splits = [channel_split(load_split(prepared, s), channel_labels(prepared, s), channel_classes(prepared))
              for s in ("train", "val")]  # fmt: skip
    train_evaluator(params.evaluate.evaluator, *splits, tmp_path / "ev.pt", progress=False, per_channel=3)
    paths = TrainPaths(prepared=prepared, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                       live_dir=tmp_path / "live", samples=tmp_path / "s.png")  # fmt: skip
    train(params, paths, progress=False)
    m = evaluate(params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared, comparison_png=None, figures_dir=None)
    assert m["mode_count"] == 1000 and m["mode_samples"] == MODE_SAMPLES
    # 26,000 real digits restacked from 60 held-out images cover most modes (as many as 60 images' channels
    # hold digits for, as a 16-px evaluator of 150 steps reads them); 12 steps of training get nowhere near
    assert m["modes_real_floor"] > 700 and m["mode_kl_real_floor"] < 0.5
    assert m["modes"] < m["modes_real_floor"] / 2 and m["mode_kl"] > m["mode_kl_real_floor"] + 1
    assert m["feature_dim"] == 96 and "each of 3 channels" in m["feature_extractor"]
    assert "confidence" not in m and "class_accuracy" not in m  # the evaluator classifies channels, not images
    compared, _ = GENERATION.split(m)
    assert list(compared) == ["fid", "fid_vs_floor", "precision", "recall", "coverage", "modes", "mode_kl"]
    assert f"Modes of the stacked digits: {m['modes']} of 1000 covered" in generation_markdown(m)


class LevelReader(nn.Module):
    """A stand-in evaluator for one channel: the class whose level is nearest the channel's mean."""

    num_features = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x.mean((1, 2, 3))[:, None] - LEVELS[None]).square() * 1e4


class ModeGenerator(nn.Module):
    """A generator with a known set of modes: z's first len(modes) entries pick one (argmax), drawn as
    flat channels at the levels of the mode's digits."""

    def __init__(self, modes: list[int]):
        super().__init__()
        self.register_buffer("digits", torch.tensor([[m // 100, m // 10 % 10, m % 10] for m in modes]))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        picked = self.digits[z[:, : len(self.digits)].argmax(1)]
        return LEVELS[picked][:, :, None, None].expand(-1, -1, 8, 8)


@pytest.mark.parametrize("count", [1, 37, 1000])
def test_mode_counting_finds_the_modes_a_generator_has_and_how_evenly_it_draws_them(count):
    modes = sorted(np.random.default_rng(count).choice(1000, size=count, replace=False).tolist())
    g = ModeGenerator(modes)
    images, _ = generate(g, MODE_SAMPLES if count == 1000 else 5000, 1000, 0, seed=1)
    reader = PerChannel(LevelReader(), 3)
    ids = mode_ids(channel_classes_of(reader, images), 10)
    assert sorted(set(ids.tolist())) == modes  # exactly the generator's modes, read back from its images
    stats = mode_stats(ids, 1000)
    assert stats["modes"] == count
    counts = np.bincount(ids.numpy(), minlength=1000)
    p = counts[counts > 0] / counts.sum()
    assert stats["mode_kl"] == pytest.approx(float(np.sum(p * np.log(p * 1000))), abs=1e-12)
    # KL(p || uniform) = log 1000 - H(p) >= log(1000 / modes), near it for an even draw
    assert math.log(1000 / count) - 1e-12 <= stats["mode_kl"] < math.log(1000 / count) + 0.05
    if count == 1:
        assert stats["mode_kl"] == pytest.approx(math.log(1000))  # total collapse
    if count == 1000:  # all covered in 26,000 draws; what is left is the finite-sample KL, about 999 / 52,000
        assert 0.01 < stats["mode_kl"] < 0.03


def test_a_mode_is_the_channels_classes_as_digits_of_a_number():
    assert mode_ids(torch.tensor([[3, 7, 1], [0, 0, 0], [9, 9, 9]]), 10).tolist() == [371, 0, 999]
    assert mode_ids(torch.tensor([[1, 0]]), 4).tolist() == [4]


def test_restacking_draws_each_channel_from_that_channel_of_the_real_images():
    classes = torch.stack([torch.arange(50), 100 + torch.arange(50), 200 + torch.arange(50)], dim=1)
    out = restack(classes, 400, seed=0)
    assert out.shape == (400, 3) and torch.equal(out, restack(classes, 400, seed=0))
    assert out[:, 0].max() < 50 and out[:, 1].min() >= 100 and out[:, 2].min() >= 200
    sources = out - torch.tensor([0, 100, 200])
    assert (sources[:, 0] != sources[:, 1]).double().mean() > 0.9  # channels drawn independently, not whole images
    assert len(set(sources[:, 0].tolist())) == 50  # every real image's channel is drawn from
