"""The plug-in catalog (pipeline/catalog.py) and the registries agree, and the documented steps for
a new architecture are enough: a toy family registered through them alone trains, is evaluated and
exports with parity."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import torch

from pipeline import catalog, losses
from pipeline.config import ConfigError, ModelConfig, TrainConfig, parse_params
from pipeline.models import ARCHS, build_discriminator, build_generator, directions
from pipeline.training.objectives import OBJECTIVES

REPO = Path(__file__).resolve().parents[1]
GENERATION_OBJECTIVES = {"gan", "stylegan2", "r3gan"}


def test_the_registries_and_the_config_list_the_catalog_s_plug_ins():
    assert list(ARCHS) == list(catalog.ARCHITECTURES)
    assert list(losses.LOSSES) == list(catalog.LOSSES)
    assert typing.get_args(ModelConfig.model_fields["arch"].annotation) == tuple(catalog.ARCHITECTURES)
    assert typing.get_args(TrainConfig.model_fields["loss"].annotation) == tuple(catalog.LOSSES)
    for name, family in catalog.ARCHITECTURES.items():
        assert family.objective in OBJECTIVES, name
        assert (family.objective in GENERATION_OBJECTIVES) == (family.task == "generate"), name
        assert set(family.own_keys) <= set(ModelConfig.model_fields), name
        assert set(family.refuses) <= {"spectral_norm", "per_sample_penalty", "r1_gamma"}, name
        assert family.loss is None or family.loss in catalog.LOSSES, name
        assert bool(family.directions) == bool(family.translator) == (family.task == "translate"), name
    for name, loss in losses.LOSSES.items():
        assert loss.name == name and loss.info is catalog.LOSSES[name]


@pytest.mark.parametrize("arch", list(catalog.ARCHITECTURES))
def test_every_family_builds_what_its_catalog_entry_says(arch):
    family = catalog.arch(arch)
    task = {"task": family.task, "data": {"source": "glyphs"}} if family.task == "translate" else {}
    loss = {"train": {"loss": family.loss}} if family.loss else {}  # the one loss the family trains with
    params = parse_params({**task, **loss, "model": {"arch": arch, "g_channels": 8, "d_channels": 8, "n_blocks": 1}})
    assert directions(arch) == list(family.directions)
    if family.task == "translate":
        assert params.model.translator_net == family.translator
        assert type(build_generator(params.model, 32, 1)).__name__ == {"unet": "UnetGenerator",
                                                                      "resnet": "ResnetGenerator"}[family.translator]
        return
    g, d = build_generator(params.model, 32, 1), build_discriminator(params.model, 32, 1)
    images = g(torch.randn(2, params.model.latent_dim))
    assert tuple(images.shape) == (2, 1, 32, 32) and d(images)[0].shape == (2,)


def test_refusals_come_from_the_catalog():
    with pytest.raises(ConfigError, match=re.escape("does not apply to stylegan2 (its layers use the")):
        parse_params({"model": {"arch": "stylegan2", "spectral_norm": True}})
    with pytest.raises(ConfigError, match=re.escape("use nonsaturating, hinge, lsgan or relativistic")):
        parse_params({"model": {"arch": "stylegan2"}, "train": {"loss": "wgan-gp"}})
    with pytest.raises(ConfigError, match=re.escape("model.arch pix2pix learns from pairs")):
        parse_params({"task": "translate", "model": {"arch": "pix2pix"},
                      "data": {"source": "folder", "path": "x", "layout": "unpaired"}})  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape("needs model.arch cyclegan or pix2pix, got 'dcgan'")):
        parse_params({"task": "translate", "data": {"source": "glyphs"}})
    with pytest.raises(ConfigError, match=re.escape("train.loss relativistic is for task generate")):
        parse_params({"task": "translate", "data": {"source": "glyphs"}, "model": {"arch": "cyclegan"},
                      "train": {"loss": "relativistic"}})  # fmt: skip
    rp = parse_params({"model": {"arch": "stylegan2"}, "train": {"loss": "relativistic"}})
    assert rp.train.loss == "relativistic"


# A toy family added through the documented steps only (docs/architecture.md, "an architecture"):
# its catalog entry, a module with G and D, and its line in ARCHS. The catalog entry is made before
# anything reads the config, as an edit of pipeline/catalog.py would be.
TOY = '''
from pipeline import catalog

catalog.ARCHITECTURES["toy"] = catalog.Arch(task="generate", objective="gan", noise_classes=False)

import torch
from torch import nn

from pipeline.models import ARCHS, Family, init_dcgan


class ToyGenerator(nn.Module):
    def __init__(self, latent_dim, image_size, channels):
        super().__init__()
        self.latent_dim, self.shape = latent_dim, (channels, image_size, image_size)
        self.net = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, channels * image_size**2))

    def forward(self, z, labels=None):
        return torch.tanh(self.net(z)).view(-1, *self.shape)


class ToyDiscriminator(nn.Module):
    def __init__(self, image_size, channels):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size**2, 64), nn.LeakyReLU(0.2),
                                 nn.Linear(64, 1))

    def forward(self, x, labels=None):
        return self.net(x).squeeze(1), None


ARCHS["toy"] = Family(
    lambda cfg, size, ch, classes: ToyGenerator(cfg.latent_dim, size, ch),
    lambda cfg, size, ch, classes: ToyDiscriminator(size, ch),
    init_dcgan,
)
'''

RUN = '''
import json, sys
sys.path.insert(0, ".")
import toy_family  # noqa: F401  (registers "toy")

from pipeline import layout
from pipeline.artifacts import write_json
from pipeline.config import ConfigError, parse_params
from pipeline.dataset import load_split
from pipeline.data.prepare import prepare
from pipeline.metrics import reference
from pipeline.metrics.evaluator import train_evaluator
from pipeline.metrics.features import extractor_for
from pipeline.tasks import task_of
from pipeline.training.runner import TrainPaths, train

tiny = {"data": {"image_size": 16}, "model": {"arch": "toy", "latent_dim": 16},
        "train": {"steps": 8, "batch_size": 16, "sample_every": 4, "log_every": 2, "checkpoint_every": 4},
        "evaluate": {"num_samples": 200, "kid_subset_size": 50, "kid_subsets": 4,
                     "evaluator": {"steps": 20, "batch_size": 64}}}
try:
    parse_params({**tiny, "model": {**tiny["model"], "classes_from_noise": True}})
    refused = None
except ConfigError as err:
    refused = str(err)
params = parse_params(tiny)
prepare(params.data, layout.PREPARED, layout.DATA_REPORT)
train_evaluator(params.evaluate.evaluator, load_split(layout.PREPARED, "train"), load_split(layout.PREPARED, "val"),
                layout.EVALUATOR, seed=params.seed)
reference.write(params, layout.PREPARED, extractor_for("evaluator", layout.EVALUATOR, 64))
trained = train(params, TrainPaths(live_dir=None))
task = task_of(params)
metrics = task.evaluate(params, reference_path=layout.REFERENCE)
exported = task.export(layout.GENERATOR, task.export_target, opset=18, tolerance=1e-4, params_hash="toy",
                       card_path=layout.MODEL_CARD)
json.dump({"refused": refused, "steps": trained.steps, "metrics": metrics, "export": exported},
          open("result.json", "w"), default=str)
'''


def test_a_toy_architecture_added_through_the_documented_steps_trains_evaluates_and_exports(tmp_path):
    (tmp_path / "toy_family.py").write_text(TOY)
    (tmp_path / "run.py").write_text(textwrap.dedent(RUN))
    env = {"PYTHONPATH": str(REPO), "GANPIPE_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "result.json").read_text())
    # the catalog entry says the family takes no classes from the noise, and the config says so
    assert "model.classes_from_noise does not apply to toy" in out["refused"]
    assert out["steps"] == 8
    metrics = out["metrics"]
    assert metrics["fid_real_floor"] < metrics["fid"]  # an 8-step toy is further from the data than real images
    assert out["export"]["parity_passed"] and out["export"]["max_abs_diff"] < 1e-4
    card = json.loads((tmp_path / "exports" / "model_card.json").read_text())
    assert "toy" in json.dumps(card)
