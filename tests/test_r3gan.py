"""R3GAN: its losses and penalties against their closed forms, its schedules, its architecture in
every class setting, exact resume, the ONNX contract, and the config it refuses."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_params
from test_training import assert_same_weights, paths, weights

from pipeline.config import ConfigError, ModelConfig, parse_params
from pipeline.export import export_generator
from pipeline.inference import OnnxGenerator
from pipeline.losses import LOSSES, r1_penalty, r2_penalty, zero_centred_penalty
from pipeline.models import build_discriminator, build_generator
from pipeline.models.r3gan import widths
from pipeline.training.checkpoint import checkpoint_files
from pipeline.training.distributed import World
from pipeline.training.objectives.r3gan import R3GanObjective, Schedule, cosine
from pipeline.training.runner import fingerprint, train

R3GAN = {"model": {"arch": "r3gan"}, "train": {"loss": "relativistic", "betas": [0.0, 0.9]}}


def r3(**over) -> dict:
    """tiny_params' overlay for an r3gan run, with `over`'s sections merged in."""
    return {k: {**R3GAN.get(k, {}), **over.get(k, {})} for k in {*R3GAN, *over}}


def test_relativistic_losses_match_their_closed_form():
    real, fake = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.5, 0.3, -1.0])
    loss = LOSSES["relativistic"]
    d = np.mean([math.log1p(math.exp(f - r)) for r, f in zip(real.tolist(), fake.tolist(), strict=True)])
    g = np.mean([math.log1p(math.exp(r - f)) for r, f in zip(real.tolist(), fake.tolist(), strict=True)])
    assert float(loss.d(real, fake)) == pytest.approx(d, rel=1e-6)
    assert float(loss.g(fake, real)) == pytest.approx(g, rel=1e-6)


def test_r1_and_r2_are_the_squared_input_gradient_of_a_known_d():
    # D(x) = sum(a * x^2): grad_x D = 2 a x, so the penalty is mean over samples of sum(4 a^2 x^2)
    a = torch.tensor([0.5, -1.5, 2.0]).view(1, 3, 1, 1).requires_grad_(True)

    def d(x, labels):
        return (a * x**2).flatten(1).sum(1), None

    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    expected = (4 * a**2 * x**2).flatten(1).sum(1).mean()
    for penalty in (r1_penalty, r2_penalty):
        value = penalty(d, x, None)
        assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
        # differentiable in D's parameters (create_graph): d/da = mean over samples of sum(8 a x^2)
        (grad_a,) = torch.autograd.grad(value, a)
        torch.testing.assert_close(grad_a, (8 * a * x**2).sum((2, 3), keepdim=True).mean(0, keepdim=True))
    inputs = x.clone().requires_grad_(True)
    fused = zero_centred_penalty(inputs, d(inputs, None)[0])
    assert float(fused.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_schedules_run_a_cosine_from_the_first_to_the_final_value_over_the_run():
    schedules = {"steps": 1000, "lr_g": 2e-4, "lr_d": 4e-4, "r3gan_lr_final": 0.25, "r3gan_gamma": 0.1,
                 "r3gan_gamma_final": 0.01, "r3gan_beta2_final": 0.99}  # fmt: skip
    cfg = parse_params(r3(train=schedules)).train
    first, mid, end = Schedule.at(cfg, 0), Schedule.at(cfg, 500), Schedule.at(cfg, 1000)
    assert first == Schedule(lr_g=2e-4, lr_d=4e-4, gamma=0.1, beta2=0.9)
    assert (end.lr_g, end.lr_d, end.gamma, end.beta2) == pytest.approx((5e-5, 1e-4, 0.01, 0.99))
    assert (mid.lr_g, mid.lr_d, mid.gamma, mid.beta2) == pytest.approx((1.25e-4, 2.5e-4, 0.055, 0.945))
    assert cosine(250, 1000, 1.0, 0.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)  # slow start
    assert cosine(2000, 1000, 1.0, 0.0) == 0.0  # held after the end


@pytest.mark.parametrize("over", [{}, {"conditional": True}, {"classes_from_noise": True}],
                         ids=["unconditional", "conditional", "classes-from-noise"])  # fmt: skip
def test_every_class_setting_builds_g_and_d_with_the_families_interface(over):
    cfg = ModelConfig(arch="r3gan", latent_dim=8, g_channels=8, d_channels=8, **over)
    g, d = build_generator(cfg, 32, 3, 5), build_discriminator(cfg, 32, 3, 5)
    z, y = torch.randn(6, 8), torch.randint(5, (6,))
    images = g(z, y)
    assert images.shape == (6, 3, 32, 32) and images.abs().max() <= 1
    logits, cls = d(images, y)
    assert logits.shape == (6,) and cls is None
    assert widths(32, 8) == [32, 32, 16, 8]  # doubled at each halving, at most 4x
    # fix-up initialisation: every residual branch starts at zero, so blocks start as the identity
    projections = [m for name, m in g.named_modules() if name.endswith("project.conv")]
    assert projections and all(not p.weight.any() for p in projections)
    if over.get("conditional"):  # the class changes the image and D's verdict
        assert not torch.allclose(g(z, (y + 1) % 5), images)
        assert not torch.allclose(d(images, (y + 1) % 5)[0], logits)
        with pytest.raises(ValueError, match="needs labels"):
            g(z)


def test_the_dcgan_backbone_trains_the_dcgan_networks_with_no_normalisation_in_d(prepared_digits, tmp_path):
    cfg = ModelConfig(arch="r3gan", backbone="dcgan", latent_dim=8, g_channels=8, d_channels=8, conditional=True)
    g, d = build_generator(cfg, 16, 1, 3), build_discriminator(cfg, 16, 1, 3)
    assert type(g).__module__ == type(d).__module__ == "pipeline.models.dcgan"
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())  # R1/R2 are per sample
    same = ModelConfig(arch="dcgan", latent_dim=8, g_channels=8, d_channels=8, conditional=True)
    torch.manual_seed(0)
    a = build_generator(cfg, 16, 1, 3)
    torch.manual_seed(0)
    b = build_generator(same, 16, 1, 3)
    assert_same_weights(a.state_dict(), b.state_dict())  # the dcgan family's G, initialised as it is there
    over = r3(model={"backbone": "dcgan", "classes_from_noise": True})
    res = train(tiny_params(**over), paths(tmp_path, prepared_digits), progress=False)
    trained = [w.flatten() for w in weights(tmp_path / "generator.pt").values() if w.is_floating_point()]
    assert res.steps == 12 and torch.isfinite(torch.cat(trained)).all()


@pytest.mark.parametrize(
    "extra",
    [
        {"model": {"classes_from_noise": True}},
        {"model": {"conditional": True, "conditioning": "acgan"}, "train": {"accumulate": 2},
         "augment": {"diffaugment": "color,translation"}},
    ],
    ids=["classes-from-noise", "acgan-accumulate-diffaugment"],
)  # fmt: skip
def test_training_sets_the_scheduled_values_and_resumes_exactly(prepared_digits, tmp_path, extra):
    over = r3(**{**extra, "train": {"r3gan_gamma": 0.5, **extra.get("train", {})}})
    full = paths(tmp_path / "full", prepared_digits)
    res = train(tiny_params(**over), full, progress=False)
    assert res.steps == 12
    # interrupted after the step-6 checkpoint: the rerun resumes there and ends with the same weights
    part = paths(tmp_path / "part", prepared_digits)
    shutil.copytree(res.checkpoints, part.checkpoints / res.checkpoints.name)
    for ckpt in checkpoint_files(part.checkpoints / res.checkpoints.name)[:1]:  # the newest, step 12
        ckpt.unlink()
    again = train(tiny_params(**over), part, progress=False)
    assert again.resumed_from == 6
    assert_same_weights(weights(full.generator), weights(part.generator))
    full_d = torch.load(res.checkpoints / "ckpt_0000012.pt", weights_only=True)["objective"]
    part_d = torch.load(again.checkpoints / "ckpt_0000012.pt", weights_only=True)["objective"]
    assert_same_weights(full_d["D"], part_d["D"])
    # the optimisers ran with the schedule's values of the last step, and the run length is in the fingerprint
    last = Schedule.at(tiny_params(**over).train, 11)
    group = full_d["opt_d"]["param_groups"][0]
    assert group["lr"] == last.lr_d and tuple(group["betas"]) == (0.0, last.beta2)
    longer = tiny_params(**{**over, "train": {**over["train"], "steps": 24}})
    assert fingerprint(longer, prepared_digits, True) != fingerprint(tiny_params(**over), prepared_digits, True)
    logged = (full.live_dir / "plots/metrics/train/R2.tsv").read_text().splitlines()
    assert len(logged) == 1 + 12 // 3 and all(float(row.split("\t")[-1]) > 0 for row in logged[1:])


def test_the_fused_penalties_equal_the_separate_forwards(prepared_digits):
    params = tiny_params(**r3(model={"conditional": True}, train={"r3gan_gamma": 1.0}))
    obj = R3GanObjective(params, prepared_digits, torch.device("cpu"), torch.float32, World())
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    fake = obj.G(torch.randn(4, 16), torch.arange(4)).detach()
    y = torch.arange(4)
    out = []
    for fused in (True, False):
        obj.fused = fused
        loss, _, _ = obj._d_loss(real, y, fake, y, obj.shard_rng[0], 0)
        grads = torch.autograd.grad(loss, list(obj.D.parameters()))
        out.append((loss.detach(), grads))
    torch.testing.assert_close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_export_follows_the_onnx_contract_with_parity(tmp_path, conditional):
    cfg = ModelConfig(arch="r3gan", latent_dim=8, g_channels=8, conditional=conditional)
    torch.manual_seed(0)
    n = 3 if conditional else 0
    g = build_generator(cfg, 16, 1, n)
    with torch.no_grad():  # every layer in play: the zero-initialised ones too
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    spec = {"model": cfg.model_dump(mode="json"), "image_size": 16, "channels": 1, "num_classes": n,
            "class_names": ["a", "b", "c"] if conditional else []}  # fmt: skip
    torch.save({"spec": spec, "state_dict": g.eval().state_dict(), "steps": 0}, tmp_path / "g.pt")
    metrics = export_generator(tmp_path / "g.pt", tmp_path / "g.onnx")
    assert metrics["parity_passed"] and metrics["max_abs_diff"] <= 1e-4
    model = onnx.load(tmp_path / "g.onnx")
    assert [i.name for i in model.graph.input] == (["z", "labels"] if conditional else ["z"])
    gen = OnnxGenerator(tmp_path / "g.onnx")
    assert gen.info.arch == "r3gan"
    for batch in (1, 7):
        images = gen.generate(batch, seed=3, labels=["b"] if conditional else None)
        assert images.shape == (batch, 1, 16, 16) and np.abs(images).max() <= 1 + 1e-6  # ORT's tanh


def test_config_refuses_what_r3gan_cannot_honour(prepared_digits):
    def refused(raw: dict) -> str:  # by the config, before any stage runs
        with pytest.raises(ConfigError) as err:
            parse_params(raw)
        return str(err.value)

    hinge = refused({"model": {"arch": "r3gan"}, "train": {"loss": "hinge"}})
    assert "train.loss: model.arch r3gan trains with the relativistic loss, got 'hinge'" in hinge
    assert "train.r1_gamma: r3gan applies R1 and R2 at every step" in refused(r3(train={"r1_gamma": 1.0}))
    for key, value in (("r3gan_beta2_final", 1.0), ("r3gan_lr_final", 0.0), ("r3gan_gamma", -1.0)):
        with pytest.raises(ConfigError, match=re.escape(f"train.{key}")):
            parse_params(r3(train={key: value}))
    with pytest.raises(ConfigError, match=re.escape("model.spectral_norm does not apply to r3gan")):
        parse_params(r3(model={"spectral_norm": True}))
    with pytest.raises(ConfigError, match=re.escape("model.stage_blocks")):
        parse_params(r3(model={"stage_blocks": 0}))
