import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.losses import LOSSES, nonsaturating_d, nonsaturating_g
from pipeline.models import build_discriminator, build_generator


@pytest.mark.parametrize("size", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes_follow_image_size(size, channels):
    cfg = ModelConfig(latent_dim=8, g_channels=8, d_channels=8)
    g, d = build_generator(cfg, size, channels), build_discriminator(cfg, size, channels)
    images = g(torch.randn(3, 8))
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1  # tanh output range is the ONNX contract
    assert d(images).shape == (3,)


def test_conditional_models_use_the_label():
    cfg = ModelConfig(latent_dim=8, g_channels=8, d_channels=8, conditional=True)
    torch.manual_seed(0)
    g, d = build_generator(cfg, 16, 1, num_classes=4), build_discriminator(cfg, 16, 1, num_classes=4)
    g.eval()
    z = torch.randn(2, 8)
    a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(d(x, torch.tensor([0, 0])), d(x, torch.tensor([3, 3])))
    with pytest.raises(ValueError, match="needs labels"):
        g(z)


def test_nonsaturating_losses_have_the_right_values_and_gradient_directions():
    real = torch.tensor([2.0, 3.0], requires_grad=True)
    fake = torch.tensor([-1.0, 0.5], requires_grad=True)
    ld = nonsaturating_d(real, fake)
    expected = torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()
    assert torch.allclose(ld, expected)
    ld.backward()
    assert (real.grad < 0).all()  # descending D's loss raises D(x) ...
    assert (fake.grad > 0).all()  # ... and lowers D(G(z))
    fake2 = torch.tensor([-1.0, 0.5], requires_grad=True)
    nonsaturating_g(fake2).backward()
    assert (fake2.grad < 0).all()  # G wants its fakes called real
    # non-saturating: G's gradient stays large when D confidently rejects the fake
    far = torch.tensor([-10.0], requires_grad=True)
    nonsaturating_g(far).backward()
    assert far.grad.abs().item() > 0.99
    assert set(LOSSES) == {"nonsaturating"}
