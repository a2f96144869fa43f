"""Unit tests of the style-transfer networks, their losses and the image history pool, and
their ONNX export with dynamic batch, height and width checked against ONNX Runtime."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.export import export_translator
from pipeline.losses import cycle_loss, identity_loss, least_squares_d, least_squares_g
from pipeline.models.translation import (
    ImagePool,
    PatchDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    default_patch_layers,
    init_translation,
    receptive_field,
)


def small_resnet(in_channels: int = 3, out_channels: int = 3) -> ResnetGenerator:
    torch.manual_seed(0)
    g = ResnetGenerator(in_channels, out_channels, width=8, n_blocks=2)
    init_translation(g)
    return g


def small_unet(image_size: int = 32, **kw) -> UnetGenerator:
    torch.manual_seed(0)
    g = UnetGenerator(3, 3, image_size, width=8, **kw)
    init_translation(g)
    return g


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- generators -------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(32, 32), (64, 64), (48, 64), (8, 12)])
def test_resnet_generator_translates_any_multiple_of_its_size_multiple(h, w):
    g = small_resnet(3, 1)
    assert g.size_multiple == 4 and g.min_size == 8
    with torch.no_grad():
        out = g(images(2, 3, h, w))
    assert out.shape == (2, 1, h, w)
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("n_down", [1, 3])
def test_resnet_size_multiple_follows_the_downsamplings(n_down):
    g = ResnetGenerator(1, 1, width=4, n_blocks=1, n_down=n_down)
    assert g.size_multiple == 2**n_down
    assert g(torch.zeros(1, 1, 2 * 2**n_down, 3 * 2**n_down)).shape == (1, 1, 2 * 2**n_down, 3 * 2**n_down)


def test_generators_name_the_size_and_the_multiple_they_need():
    with pytest.raises(ValueError, match=r"ResnetGenerator: input 30x32 is not a multiple of 4"):
        small_resnet()(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"input 4x8 is too small: .* at least 8"):  # the bottleneck would be 1x1
        small_resnet()(torch.zeros(1, 3, 4, 8))
    with pytest.raises(ValueError, match=r"UnetGenerator: input 48x32 is not a multiple of 32"):
        small_unet(32)(torch.zeros(1, 3, 48, 32))
    with pytest.raises(ValueError, match="power of two"):
        UnetGenerator(3, 3, 48)


@pytest.mark.parametrize(("image_size", "h", "w"), [(32, 32, 32), (64, 64, 64), (32, 64, 32), (16, 16, 48)])
def test_unet_generator_keeps_the_shape_at_multiples_of_its_training_size(image_size, h, w):
    g = small_unet(image_size).eval()
    assert g.size_multiple == image_size
    with torch.no_grad():
        out = g(images(2, 3, h, w))
    assert out.shape == (2, 3, h, w)
    assert out.min() >= -1 and out.max() <= 1


def test_unet_skip_connections_reach_the_output():
    """Changing one input pixel changes the output right there: the outermost skip carries it."""
    g = small_unet(32).eval()
    x = images(1, 3, 32, 32)
    y = x.clone()
    y[0, :, 5, 5] = -y[0, :, 5, 5]
    with torch.no_grad():
        diff = (g(x) - g(y)).abs()[0].sum(0)
    assert diff[4:7, 4:7].max() > 0


def test_unet_with_fewer_levels_sees_a_window_and_takes_multiples_of_two_to_the_levels():
    """unet_levels: 3 stride-2 levels at 64 px keep an 8x8 bottleneck; an input pixel changes the
    outputs near it, and far ones only through instance norm's per-image statistics (the
    full-depth U-Net's 1x1 bottleneck carries it into every output pixel)."""
    local, full = small_unet(64, levels=3).eval(), small_unet(64).eval()
    assert (local.size_multiple, local.min_size, full.size_multiple) == (8, 8, 64)
    x = images(1, 3, 64, 64)
    y = x.clone()
    y[0, :, 2, 2] = -y[0, :, 2, 2]
    with torch.no_grad():
        near_local, far_local = ((local(x) - local(y)).abs()[0].sum(0)[r] for r in (np.s_[:8, :8], np.s_[40:, 40:]))
        far_full = (full(x) - full(y)).abs()[0].sum(0)[40:, 40:]
        assert local(images(2, 3, 24, 40)).shape == (2, 3, 24, 40)  # any multiple of 8
    assert far_local.max() < near_local.max() / 20 and far_local.max() < far_full.max() / 5
    with pytest.raises(ValueError, match=r"levels must be between 2 and log2\(image_size\) = 6, got 7"):
        UnetGenerator(3, 3, 64, levels=7)


def test_unet_levels_beyond_the_image_size_are_refused_by_name():
    from conftest import tiny_params

    raw = {"task": "translate", "data": {"source": "glyphs", "image_size": 32},
           "model": {"arch": "pix2pix", "unet_levels": 6}}  # fmt: skip
    with pytest.raises(ValueError, match=r"model\.unet_levels: at most log2\(data\.image_size\) = 5"):
        tiny_params(**raw)


@pytest.mark.parametrize(("image_size", "width"), [(32, 8), (64, 8), (64, 64)])
def test_unet_dropout_is_in_three_decoder_levels_whatever_the_width(image_size, width):
    g = UnetGenerator(3, 3, image_size, width=width)
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in UnetGenerator(3, 3, image_size, width, dropout=False).modules())


def test_unet_dropout_is_noise_while_training_and_off_in_eval():
    g = small_unet(32)
    x = images(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(g.train()(x), g(x))
        g.eval()
        assert torch.equal(g(x), g(x))  # deterministic: what the ONNX export reproduces


def test_init_translation_draws_conv_weights_from_n_0_002():
    g = ResnetGenerator(3, 3, width=32, n_blocks=2)
    init_translation(g)
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all(not m.bias.any() for m in g.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)


# --- PatchGAN ---------------------------------------------------------------------------


def test_receptive_field_matches_the_reference_70px_patchgan():
    assert [receptive_field(n) for n in (1, 2, 3)] == [16, 34, 70]
    assert [default_patch_layers(s) for s in (16, 32, 64, 128, 256)] == [1, 1, 2, 3, 3]


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_receptive_field_is_what_the_network_sees(n_layers):
    """The input pixels one interior logit depends on span exactly receptive_field(n_layers).
    Instance norm couples every pixel, so it is taken out to measure the convolutions alone."""
    d = PatchDiscriminator(1, 128, width=4, n_layers=n_layers)
    d.net = nn.Sequential(*(nn.Identity() if isinstance(m, nn.InstanceNorm2d) else m for m in d.net))
    x = torch.randn(1, 1, 128, 128, requires_grad=True)
    out = d(x)
    c = out.shape[-1] // 2
    out[0, 0, c, c].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    assert int(rows.max() - rows.min()) + 1 == receptive_field(n_layers)


@pytest.mark.parametrize(("image_size", "grid"), [(32, 14), (64, 14), (256, 30)])
def test_patch_discriminator_gives_a_grid_of_logits(image_size, grid):
    d = PatchDiscriminator(2, image_size, width=4)  # pix2pix: the caller concatenates A (1 ch) and B (1 ch)
    a, b = images(2, 1, image_size, image_size), images(2, 1, image_size, image_size, seed=1)
    assert d(torch.cat([a, b], 1)).shape == (2, 1, grid, grid)  # 30x30 at 256 px, as in the reference


def test_patch_discriminator_layer_count_can_be_set():
    d = PatchDiscriminator(3, 64, width=4, n_layers=3)
    assert d.n_layers == 3 and d(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)


# --- losses -----------------------------------------------------------------------------


def test_cycle_and_identity_losses_are_mean_absolute_errors():
    real = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])
    rec = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    assert cycle_loss(real, rec).item() == pytest.approx(0.625)  # (1 + 1 + 0.5 + 0) / 4
    same = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])
    assert identity_loss(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), same).item() == pytest.approx(1.5)


def test_least_squares_losses_average_over_patch_logits():
    """LSGAN as registered ("lsgan") applies to PatchGAN grids unchanged. Its G loss is half the
    reference's MSE, so lambda_cycle = 10 here weighs cycle consistency like 20 there."""
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert least_squares_d(ones, zeros).item() == 0.0
    assert least_squares_d(zeros, ones).item() == pytest.approx(1.0)  # (0.5 * 1 + 0.5 * 1)
    half = torch.full((2, 1, 3, 3), 0.5)
    assert least_squares_d(half, half).item() == pytest.approx(0.25)  # 0.5 * 0.25 + 0.5 * 0.25
    assert least_squares_g(zeros).item() == pytest.approx(0.5)  # 0.5 * mean((0 - 1)^2)


# --- image pool -------------------------------------------------------------------------


def tagged(*tags: int) -> torch.Tensor:
    """One 1x2x2 image per tag, filled with the tag, so an image's identity survives the pool."""
    return torch.tensor(tags, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 2).clone()


def tags_of(batch: torch.Tensor) -> list[int]:
    return [int(v) for v in batch[:, 0, 0, 0]]


def test_pool_of_size_zero_passes_images_through():
    pool = ImagePool(0)
    x = images(3, 1, 2, 2)
    assert torch.equal(pool.query(x), x) and pool.images == []


def test_pool_returns_its_inputs_while_filling():
    pool = ImagePool(5, torch.Generator().manual_seed(0))
    assert tags_of(pool.query(tagged(1, 2, 3))) == [1, 2, 3]
    assert tags_of(pool.query(tagged(4, 5))) == [4, 5]
    assert sorted(tags_of(torch.cat(pool.images))) == [1, 2, 3, 4, 5]


def test_full_pool_returns_each_input_or_a_stored_image_it_replaces():
    pool = ImagePool(4, torch.Generator().manual_seed(1))
    pool.query(tagged(1, 2, 3, 4))
    swapped = kept = 0
    for start in range(10, 200, 10):
        before = tags_of(torch.cat(pool.images))
        inputs = list(range(start, start + 4))
        out = tags_of(pool.query(tagged(*inputs)))
        after = tags_of(torch.cat(pool.images))
        for got, given in zip(out, inputs, strict=True):
            assert got == given or got in before or got in inputs  # an earlier input of this batch may be drawn
            swapped, kept = swapped + (got != given), kept + (got == given)
        # every image is either handed back or kept: none is lost or duplicated
        assert sorted(before + inputs) == sorted(after + out)
        assert len(after) == 4
    assert swapped > 10 and kept > 10  # probability 1/2 each way


def test_pool_output_is_detached():
    pool = ImagePool(2)
    x = images(3, 1, 2, 2).requires_grad_(True)
    assert not pool.query(x).requires_grad


def stream(pool: ImagePool, start: int, n: int) -> list[list[int]]:
    return [tags_of(pool.query(tagged(*range(s, s + 3)))) for s in range(start, start + 3 * n, 3)]


def test_pool_draws_are_reproducible_from_the_seed():
    a, b = ImagePool(4, torch.Generator().manual_seed(3)), ImagePool(4, torch.Generator().manual_seed(3))
    assert stream(a, 0, 20) == stream(b, 0, 20)
    c = ImagePool(4, torch.Generator().manual_seed(4))
    assert stream(c, 0, 20) != stream(ImagePool(4, torch.Generator().manual_seed(3)), 0, 20)


def test_pool_resumed_from_its_state_dict_continues_identically():
    pool = ImagePool(4, torch.Generator().manual_seed(5))
    stream(pool, 0, 5)
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)  # as a checkpoint would, and read back the same way
    buffer.seek(0)
    resumed = ImagePool(4, torch.Generator().manual_seed(999))
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert stream(resumed, 100, 10) == stream(pool, 100, 10)


def test_pool_serves_stored_images_in_the_incoming_dtype():
    """Restored images live on the CPU in float32; a run may feed another device or dtype."""
    pool = ImagePool(2, torch.Generator().manual_seed(0))
    pool.query(tagged(1, 2))
    restored = ImagePool(2, torch.Generator().manual_seed(0))
    restored.load_state_dict(pool.state_dict())
    out = restored.query(tagged(*range(10, 20)).double())
    assert out.dtype == torch.float64 and set(tags_of(out)) & {1, 2}
    restored.state_dict()  # mixed provenance still stacks


# --- ONNX -------------------------------------------------------------------------------


def export(model: nn.Module, path: Path, image_size: int) -> None:
    """The export stage's own recipe (pipeline.export.export_translator) on a bare model."""
    spec = {"size_multiple": model.size_multiple, "channels": 3, "image_size": image_size}
    export_translator(model.eval(), path, spec, metadata={}, opset=18)


def ort_max_diff(model: nn.Module, path: Path, shapes: list[tuple[int, ...]]) -> list[float]:
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for i, shape in enumerate(shapes):
        x = images(*shape, seed=i)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(["translated"], {"images": x.numpy()})[0]
        assert got.shape == expected.shape
        diffs.append(float(np.abs(got - expected).max()))
    return diffs


def test_resnet_generator_exports_with_dynamic_batch_height_and_width(tmp_path):
    g = small_resnet().eval()
    export(g, tmp_path / "g.onnx", 32)
    assert not (tmp_path / "g.onnx.data").exists()
    assert max(ort_max_diff(g, tmp_path / "g.onnx", [(1, 3, 32, 32), (3, 3, 48, 64)])) <= 1e-4


def test_unet_generator_exports_with_dynamic_batch_and_multiples_of_its_size(tmp_path):
    """Traced at its training size the U-Net's 1x1 bottleneck would pin H = W = 32; the
    export traces above it, and the graph still runs at the training size."""
    g = small_unet(32).eval()
    export(g, tmp_path / "u.onnx", 32)
    assert max(ort_max_diff(g, tmp_path / "u.onnx", [(1, 3, 32, 32), (3, 3, 64, 32), (2, 3, 96, 64)])) <= 1e-4
    shallow = small_unet(32, levels=3).eval()  # model.unet_levels: any multiple of 8
    export(shallow, tmp_path / "s.onnx", 32)
    assert max(ort_max_diff(shallow, tmp_path / "s.onnx", [(1, 3, 32, 32), (2, 3, 24, 40)])) <= 1e-4
