import math

import pytest
import torch
from torch.nn.utils import parametrize

from pipeline.config import ModelConfig
from pipeline.losses import LOSSES, gradient_penalty, nonsaturating_d, nonsaturating_g, r1_penalty
from pipeline.models import build_discriminator, build_generator


@pytest.mark.parametrize(("arch", "size"), [("dcgan", 8), ("dcgan", 32), ("dcgan", 64), ("dcgan", 128),
                                            ("resnet", 32), ("resnet", 64)])  # fmt: skip
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes_follow_image_size(arch, size, channels):
    cfg = ModelConfig(arch=arch, latent_dim=8, g_channels=8, d_channels=8)
    g, d = build_generator(cfg, size, channels), build_discriminator(cfg, size, channels)
    images = g(torch.randn(3, 8))
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1  # tanh output range is the ONNX contract
    logits, cls = d(images)
    assert logits.shape == (3,) and cls is None


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("conditioning", ["projection", "acgan"])
def test_conditional_models_use_the_label(arch, conditioning):
    cfg = ModelConfig(arch=arch, latent_dim=8, g_channels=8, d_channels=8, conditional=True, conditioning=conditioning)
    torch.manual_seed(0)
    g, d = build_generator(cfg, 16, 1, num_classes=4), build_discriminator(cfg, 16, 1, num_classes=4)
    with torch.no_grad():  # as after training: class-specific norm scales (resnet starts them all at 1)
        for name, p in g.named_parameters():
            if name.endswith("gamma.weight"):
                p.add_(torch.randn_like(p))
    g.eval()
    d.eval()
    z = torch.randn(2, 8)
    assert not torch.allclose(g(z, torch.tensor([0, 0])), g(z, torch.tensor([3, 3])))
    x = torch.randn(2, 1, 16, 16)
    a, cls = d(x, torch.tensor([0, 0]))
    b, _ = d(x, torch.tensor([3, 3]))
    if conditioning == "projection":
        assert not torch.allclose(a, b) and cls is None
    else:  # ACGAN: D predicts the class instead of reading it
        assert torch.allclose(a, b) and cls.shape == (2, 4)
    with pytest.raises(ValueError, match="needs labels"):
        g(z)


def test_conditional_batch_norm_starts_as_plain_batch_norm():
    cfg = ModelConfig(arch="resnet", latent_dim=8, g_channels=8, conditional=True)
    g = build_generator(cfg, 16, 1, num_classes=3)
    g.eval()
    z = torch.randn(2, 8)
    assert torch.allclose(g(z, torch.tensor([0, 0])), g(z, torch.tensor([2, 2])))  # identical until trained


def test_spectral_norm_and_norm_options_change_the_discriminator():
    plain = build_discriminator(ModelConfig(d_channels=8), 32, 1)
    spectral = build_discriminator(ModelConfig(d_channels=8, spectral_norm=True, d_norm="none"), 32, 1)
    convs = [m for m in spectral.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in spectral.modules())
    # each normalised weight has spectral norm ~1 (after the power iteration settles)
    spectral.train()
    for _ in range(30):
        spectral(torch.randn(4, 1, 32, 32))
    w = convs[1].weight.flatten(1)
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_each_loss_teaches_d_to_separate_and_g_to_move_towards_real(loss):
    """A 1-D toy GAN: real ~ N(2, 0.1), fake ~ N(-2, 0.1), D(x) = w x + b."""
    d_loss, g_loss = LOSSES[loss].d, LOSSES[loss].g
    gen = torch.Generator().manual_seed(0)
    real, fake = 2 + 0.1 * torch.randn(64, generator=gen), -2 + 0.1 * torch.randn(64, generator=gen)
    w, b = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        d_loss(w * real + b, w * fake + b).backward()
        opt.step()
    assert w.item() > 0  # D now scores real above fake
    assert (w * real + b).mean() > (w * fake + b).mean()
    x = fake.clone().requires_grad_(True)
    g_loss(w.detach() * x + b.detach(), (w * real + b).detach()).backward()  # real logits: relativistic losses
    assert (x.grad < 0).all()  # descending G's loss moves every fake up, towards the real data


def test_loss_values_on_known_inputs():
    real, fake = torch.tensor([2.0, 1.0]), torch.tensor([-1.0, -3.0])
    assert LOSSES["hinge"].d(real, fake).item() == 0.0  # both margins satisfied
    assert LOSSES["hinge"].g(fake, None).item() == 2.0
    assert LOSSES["lsgan"].d(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert LOSSES["lsgan"].g(torch.zeros(2), None).item() == 0.5
    assert LOSSES["wgan-gp"].d(real, fake).item() == -3.5  # E[D(G(z))] - E[D(x)]
    # relativistic pairing: each real against its own fake, softplus(fake - real) = log(1 + e^-3), log(1 + e^-4)
    rp = LOSSES["relativistic"]
    assert rp.d(real, fake).item() == pytest.approx((math.log1p(math.exp(-3)) + math.log1p(math.exp(-4))) / 2)
    assert rp.g(fake, real).item() == pytest.approx((math.log1p(math.exp(3)) + math.log1p(math.exp(4))) / 2)
    with pytest.raises(ValueError, match="real images"):
        rp.g(fake, None)
    # what the objectives read instead of the name: the penalty and how D's logits are logged
    assert [n for n, loss in LOSSES.items() if loss.gradient_penalty] == ["wgan-gp"]
    assert LOSSES["nonsaturating"].score(torch.zeros(1)).item() == 0.5 and LOSSES["hinge"].score(real) is real
    expected = torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()
    assert torch.allclose(nonsaturating_d(real, fake), expected)
    # non-saturating: G's gradient stays large when D confidently rejects the fake
    far = torch.tensor([-10.0], requires_grad=True)
    nonsaturating_g(far).backward()
    assert far.grad.abs().item() > 0.99


def linear_critic(weight: torch.Tensor):
    def d(x, labels=None):
        return (x.flatten(1) * weight).sum(1), None

    return d


def test_gradient_penalty_and_r1_match_their_closed_forms_for_a_linear_critic():
    w = torch.tensor([3.0, 4.0, 0.0, 0.0])  # ||w|| = 5
    real, fake = torch.randn(8, 1, 2, 2), torch.randn(8, 1, 2, 2)
    gp = gradient_penalty(linear_critic(w), real, fake, None, torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx((5.0 - 1.0) ** 2)  # (||grad|| - 1)^2
    assert r1_penalty(linear_critic(w), real, None).item() == pytest.approx(25.0)  # ||grad||^2
