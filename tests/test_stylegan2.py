"""StyleGAN2: the networks' maths, its regularisers, and its export with truncation."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, tiny_params
from test_export import save_generator

from pipeline.config import ConfigError, ModelConfig
from pipeline.export import export_generator
from pipeline.grid import make_grid
from pipeline.inference import create_session
from pipeline.losses import path_length_penalty, path_lengths, r1_penalty
from pipeline.models import build_discriminator, build_generator
from pipeline.models.artifact import generator_spec
from pipeline.models.stylegan2 import minibatch_stddev, modulated_conv2d, widths


def small(size: int = 16, channels: int = 1, classes: int = 0, width: int = 16):
    cfg = ModelConfig(arch="stylegan2", latent_dim=8, g_channels=width, d_channels=width, mapping_layers=2,
                      conditional=bool(classes))  # fmt: skip
    torch.manual_seed(0)
    return build_generator(cfg, size, channels, classes), build_discriminator(cfg, size, channels, classes)


@pytest.mark.parametrize("size", [8, 16, 32, 64, 128, 256])
def test_shapes_and_widths_at_every_resolution(size):
    g, d = small(size, channels=3, width=32)
    z = torch.randn(4, 8)
    images = g(z)
    assert images.shape == (4, 3, size, size)
    logits, cls = d(images)
    assert logits.shape == (4,) and cls is None
    # one w per modulated conv, plus one for the last ToRGB; two convs per doubling after 4 px
    assert g.num_ws == 2 + 2 * (int(math.log2(size)) - 2)
    assert g.ws(z).shape == (4, g.num_ws, 8)
    w = widths(32, size)
    assert sorted(w) == [4 * 2**i for i in range(int(math.log2(size)) - 1)]
    assert w[size] == 32 and all(w[r] == min(32 * size // r, 256) for r in w)  # thinner as resolution grows
    assert all(w[r] >= w[2 * r] for r in w if 2 * r in w)


def test_demodulation_matches_the_closed_form_weight_normalisation():
    torch.manual_seed(1)
    x, weight, styles = torch.randn(3, 5, 7, 7), torch.randn(6, 5, 3, 3), torch.randn(3, 5)
    for grouped in (False, True):
        out = modulated_conv2d(x, weight, styles, demodulate=True, grouped=grouped)
        for n in range(3):  # the paper's eq. 1 and 3, one sample at a time
            w1 = weight * styles[n][None, :, None, None]
            w2 = w1 / torch.sqrt((w1**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
            assert torch.allclose(out[n], F.conv2d(x[n : n + 1], w2, padding=1)[0], atol=1e-5)
        plain = modulated_conv2d(x, weight, styles, demodulate=False, grouped=grouped)
        for n in range(3):
            w1 = weight * styles[n][None, :, None, None]
            assert torch.allclose(plain[n], F.conv2d(x[n : n + 1], w1, padding=1)[0], atol=1e-4)
    # demodulated outputs have about unit variance for unit-variance inputs, whatever the style scale
    big = modulated_conv2d(torch.randn(8, 64, 16, 16), torch.randn(32, 64, 3, 3), 10 * torch.rand(8, 64) + 0.1)
    assert 0.7 < big.std().item() < 1.3


def test_style_mixing_switches_w_at_the_cutoff_layer():
    g, _ = small(16)
    g.eval()
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    w1, w2 = g.mapping(z1, None), g.mapping(z2, None)
    for cutoff in range(1, g.num_ws):
        ws = g.ws(z1, mix=(z2, cutoff))
        assert torch.equal(ws[:, :cutoff], w1[:, None].expand(-1, cutoff, -1))
        assert torch.equal(ws[:, cutoff:], w2[:, None].expand(-1, g.num_ws - cutoff, -1))
    mixed = g(z1, mix=(z2, 3))
    assert torch.equal(mixed, g.synthesis(g.ws(z1, mix=(z2, 3))).clamp(-1, 1))
    assert not torch.allclose(mixed, g(z1)) and not torch.allclose(mixed, g(z2))


def test_truncation_pulls_w_towards_its_running_mean():
    g, _ = small(16)
    z = torch.randn(4, 8)
    g.train()
    for _ in range(3):
        g.mapping(torch.randn(64, 8), None)  # training forwards track the mean of w
    assert g.mapping.w_avg.abs().sum() > 0
    g.eval()
    avg = g.mapping.w_avg
    assert torch.allclose(g.ws(z, truncation_psi=torch.tensor([0.0])), avg.expand(4, g.num_ws, 8))
    assert torch.allclose(g(z, truncation_psi=torch.tensor([1.0])), g(z), atol=1e-6)
    half = g.ws(z, truncation_psi=torch.tensor([0.5]))
    assert torch.allclose(half, avg + 0.5 * (g.ws(z) - avg), atol=1e-6)
    per_sample = g.ws(z, truncation_psi=torch.tensor([1.0, 0.0, 0.5, 1.0]))
    assert torch.allclose(per_sample[1], avg.expand(g.num_ws, 8)) and torch.allclose(per_sample[0], g.ws(z)[0])
    before = g.mapping.w_avg.clone()
    g(torch.randn(4, 8))
    assert torch.equal(g.mapping.w_avg, before)  # evaluation leaves it alone


def test_noise_is_fresh_in_training_and_constant_otherwise():
    g, _ = small(16)
    for conv in g.convs:
        conv.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 8)
    g.eval()
    assert torch.equal(g(z), g(z))  # stored noise: a pure function of z
    g.train()
    a = g(z, noise_rng=torch.Generator().manual_seed(1))
    b = g(z, noise_rng=torch.Generator().manual_seed(1))
    c = g(z, noise_rng=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_grouped_and_shared_weight_forms_give_the_same_generator():
    g, _ = small(32, channels=3, classes=3)
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    g.eval()  # grouped convolutions
    grouped = g(z, y)
    with torch.no_grad():
        g.train()  # shared-weight form; the mapping's running mean moves, so restore it
        avg = g.mapping.w_avg.clone()
        shared = g.synthesis(g.ws(z, y)).clamp(-1, 1)
        g.mapping.w_avg.copy_(avg)
    assert torch.allclose(grouped, shared, atol=1e-5)


def test_path_length_matches_the_closed_form_of_a_linear_synthesis():
    torch.manual_seed(0)
    n, layers, dim, side = 3, 2, 4, 5
    a = torch.randn(layers, dim, side * side)
    ws = torch.randn(n, layers, dim, requires_grad=True)

    def synthesis(w):  # image = sum_l w_l A_l: its Jacobian with respect to w_l is A_l
        return torch.einsum("nld,ldp->np", w, a).reshape(n, 1, side, side)

    lengths = path_lengths(synthesis, ws, torch.Generator().manual_seed(3))
    y = torch.randn((n, 1, side, side), generator=torch.Generator().manual_seed(3)).flatten(1) / side
    expected = torch.einsum("ldp,np->nld", a, y).square().sum(2).mean(1).sqrt()
    assert torch.allclose(lengths, expected, atol=1e-5)
    # the penalty's gradient pushes each length towards the target: d/dl (l - t)^2 / n = 2 (l - t) / n
    target = torch.tensor(1.0)
    lengths_leaf = lengths.detach().requires_grad_(True)
    path_length_penalty(lengths_leaf, target).backward()
    assert torch.allclose(lengths_leaf.grad, 2 * (lengths_leaf.detach() - target) / n)
    # and it reaches the weights through the Jacobian (create_graph)
    a.requires_grad_(True)
    path_length_penalty(path_lengths(synthesis, ws, torch.Generator().manual_seed(3)), target).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_r1_on_the_stylegan2_discriminator_is_the_squared_input_gradient():
    _, d = small(16)
    x = torch.randn(4, 1, 16, 16)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(xr)[0].sum(), xr)
    assert r1_penalty(d, x, None).item() == pytest.approx(grad.flatten(1).pow(2).sum(1).mean().item(), rel=1e-5)


def test_minibatch_stddev_sees_the_spread_within_each_group():
    same = torch.ones(8, 2, 4, 4)
    assert torch.allclose(minibatch_stddev(same)[:, 2], torch.full((8, 4, 4), 1e-4), atol=1e-4)
    spread = torch.cat([torch.zeros(4, 2, 4, 4), 2 * torch.ones(4, 2, 4, 4)])  # groups mix samples i, i+2, ...
    out = minibatch_stddev(spread)
    assert out.shape == (8, 3, 4, 4) and torch.allclose(out[:, 2], torch.ones(8, 4, 4), atol=1e-3)
    assert minibatch_stddev(torch.randn(6, 2, 4, 4)).shape == (6, 3, 4, 4)  # group of 3 when 4 does not divide
    # model.mbstd_group 8: one group of all eight, whose spread (0 and 2: std 1) every sample sees
    alternating = (torch.arange(8) % 2 * 2.0)[:, None, None, None].expand(8, 2, 4, 4)  # 0, 2, 0, 2, ...: groups of 4
    # (samples i, i+2, i+4, i+6) hold one value each, the group of 8 both
    assert torch.allclose(minibatch_stddev(alternating)[:, 2], torch.full((8, 4, 4), 1e-4), atol=1e-4)
    assert torch.allclose(minibatch_stddev(alternating, 8)[:, 2], torch.ones(8, 4, 4), atol=1e-3)
    cfg = ModelConfig(arch="stylegan2", latent_dim=8, g_channels=8, d_channels=8, mbstd_group=8)
    d8, d4 = build_discriminator(cfg, 8, 1), build_discriminator(cfg.model_copy(update={"mbstd_group": 4}), 8, 1)
    d4.load_state_dict(d8.state_dict())  # the same weights: only the group differs
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert d8.mbstd_group == 8 and not torch.allclose(d8(x)[0], d4(x)[0])


def test_conditional_generator_and_projection_discriminator_use_the_label():
    g, d = small(16, classes=3)
    z = torch.randn(1, 8).repeat(3, 1)
    g.eval()
    images = g(z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(images[0], images[1])
    x = torch.randn(1, 1, 16, 16).repeat(3, 1, 1, 1)
    torch.nn.init.normal_(d.head.embed.weight)
    logits, _ = d(x, torch.tensor([0, 1, 2]))
    assert len(set(logits.tolist())) == 3
    with pytest.raises(ValueError, match="needs labels"):
        g(z)


def test_settings_that_do_not_fit_stylegan2_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"spectral_norm"):
        tiny_params(model={"arch": "stylegan2", "spectral_norm": True})
    with pytest.raises(ConfigError, match=r"wgan-gp"):
        tiny_params(model={"arch": "stylegan2"}, train={"loss": "wgan-gp"})
    # no batch norm in its D: d_norm's batch-size rule does not apply
    assert tiny_params(model={"arch": "stylegan2", "d_norm": "batch"}, train={"batch_size": 2}).train.batch_size == 2


def test_other_architectures_keep_their_spec_and_stylegan2_records_its_own():
    assert not {"mapping_layers", "translator"} & set(generator_spec(tiny_params(), 16, 1, [])["model"])
    assert "mbstd_group" not in generator_spec(tiny_params(), 16, 1, [])["model"]
    spec = generator_spec(tiny_params(model={"arch": "stylegan2", "mapping_layers": 3, "mbstd_group": 32}), 16, 1, [])
    assert spec["model"]["mapping_layers"] == 3 and spec["model"]["mbstd_group"] == 32


@pytest.fixture(scope="module")
def exported_stylegan2(tmp_path_factory):
    root = tmp_path_factory.mktemp("sg2")
    path = save_generator(root / "g.pt", conditional=True, arch="stylegan2")
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["mapping.w_avg"] = torch.randn(8, generator=torch.Generator().manual_seed(1))
    torch.save(blob, path)
    metrics = export_generator(path, root / "generator.onnx", card_path=root / "card.json")
    return root, metrics


def test_onnx_export_takes_an_optional_truncation_psi_and_keeps_parity(exported_stylegan2):
    root, metrics = exported_stylegan2
    diffs = metrics["max_abs_diff_per_batch"]
    assert metrics["parity_passed"] and metrics["max_abs_diff"] <= 1e-4
    assert set(diffs) == {f"batch_{n}_psi_{p}" for n in (1, 16) for p in ("1", "0.5", "default")}
    session = create_session(root / "generator.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["ganpipe.inputs"]) == ["z", "labels", "truncation_psi"]
    card = json.loads((root / "card.json").read_text())
    assert [i["name"] for i in card["inputs"]] == ["z", "labels", "truncation_psi"]
    assert card["inputs"][2]["optional"] and card["inputs"][2]["default"] == 1.0

    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((4, 8), dtype=np.float32), np.array([0, 1, 2, 0])

    def run(psi=None):
        feed = {"z": z, "labels": y} | ({} if psi is None else {"truncation_psi": np.asarray(psi, np.float32)})
        return session.run(["images"], feed)[0]

    assert np.array_equal(run(), run([1.0]))  # not fed = 1 = no truncation
    zero = run([0.0])
    assert np.abs(zero - zero[0]).max() < 1e-5  # psi 0: every z gives the average image
    half = run([0.5])
    assert np.abs(half - zero).mean() < np.abs(run() - zero).mean()  # closer to the average than untruncated
    per_sample = run([1.0, 0.0, 0.5, 1.0])  # one value per sample
    assert np.allclose(per_sample[1], zero[1], atol=1e-5) and np.allclose(per_sample[2], half[2], atol=1e-5)
    assert np.allclose(per_sample[0], run()[0], atol=1e-6)


def test_generators_without_truncation_keep_their_inputs(exported_stylegan2, tmp_path):
    export_generator(save_generator(tmp_path / "g.pt"), tmp_path / "g.onnx")
    session = create_session(tmp_path / "g.onnx")
    assert [i.name for i in session.get_inputs()] == ["z"] and not session.get_overridable_initializers()
    assert json.loads(session.get_modelmeta().custom_metadata_map["ganpipe.inputs"]) == ["z"]


def test_the_readme_figure_shows_the_same_seeds_at_three_truncation_values(exported_stylegan2, tmp_path):
    from test_figures import load_script

    from pipeline import layout
    from pipeline.inference import OnnxGenerator

    root, _ = exported_stylegan2
    figures = load_script(REPO)
    run = figures.Run("configs/stylegan2-digits.yaml", "0" * 40, {"task": "generate"}, {"fid": 1.25}, tmp_path,
                      files={layout.ONNX_GENERATOR: root / "generator.onnx"})  # fmt: skip
    fig = figures.stylegan2_digits([run])
    assert [ax.get_ylabel() for ax in fig.axes] == ["stylegan2-digits, ψ 1 (no truncation)\nFID 1.250", "ψ 0.7",
                                                    "ψ 0.5"]  # fmt: skip
    g = OnnxGenerator(root / "generator.onnx")
    for ax, psi in zip(fig.axes, (1.0, 0.7, 0.5), strict=True):  # each row: seeds 0..15 at its psi
        expected = make_grid(g.generate(16, seed=0, labels=None, truncation_psi=psi), 16)[..., 0]
        np.testing.assert_array_equal(ax.images[0].get_array(), expected)


def test_bf16_autocast_keeps_the_networks_finite_and_close_to_full_precision():
    """The CUDA engine's default precision is bf16 autocast; CPU autocast runs the same casts."""
    g, d = small(16, classes=3)
    z, z2, y = torch.randn(8, 8), torch.randn(8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    full = g(z, y, mix=(z2, 2), noise_rng=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = g(z, y, mix=(z2, 2), noise_rng=torch.Generator().manual_seed(0))
        logits, _ = d(half, y)
        ws = g.ws(z[:4], y[:4])
        lengths = path_lengths(lambda w: g.synthesis(w, torch.Generator().manual_seed(1)), ws, torch.Generator())
    (logits.float().mean() + path_length_penalty(lengths, torch.tensor(0.0))).backward()
    assert torch.isfinite(half).all() and (half.float() - full).abs().max() < 0.25
    assert all(torch.isfinite(p.grad).all() for p in [*g.parameters(), *d.parameters()] if p.grad is not None)
    assert torch.isfinite(lengths).all() and lengths.dtype == torch.float32
