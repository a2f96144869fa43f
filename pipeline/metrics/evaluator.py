"""The evaluator: a small CNN trained on the real training split, whose penultimate layer
is the feature space for FID/KID.

Inception weights cannot be downloaded here, and ImageNet features say little about 32x32
digits anyway; a classifier trained on the data itself is the usual substitute (the
approach of "domain-specific FID"). With class labels it learns the classes; a dataset with
a single class learns rotation prediction instead (0/90/180/270 degrees), a self-supervised
task that still needs shape features. Its val accuracy is reported so the feature space's
quality is visible beside every FID.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.artifacts import save_torch
from pipeline.config import EvaluatorConfig
from pipeline.dataset import PreparedSplit, to_float
from pipeline.errors import MissingInput
from pipeline.runtime import seed_everything


class EvaluatorNet(nn.Module):
    """conv blocks -> global average pool -> `features`-d embedding -> class logits."""

    def __init__(self, channels: int, num_outputs: int, features: int = 128):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(channels, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            nn.MaxPool2d(2),
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, features),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(features, num_outputs)
        self.num_features = features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class PerChannel(nn.Module):
    """An evaluator trained on single channels (stacked digits: a digit per channel) applied to every
    channel of an image: its features are the channels' features side by side, its logits one row
    of class logits per channel [N, C, K]."""

    def __init__(self, net: EvaluatorNet, channels: int):
        super().__init__()
        self.net, self.channels = net, channels
        self.num_features = net.num_features * channels

    def _each(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n * c, 1, h, w)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(self._each(x)).reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._each(x)).reshape(x.shape[0], x.shape[1], -1)


def channel_split(split: PreparedSplit, labels: np.ndarray, classes: list[str]) -> PreparedSplit:
    """Every channel of every image as a grey image of its own, labelled with its class (`labels`
    [N, C]): what a per-channel evaluator is trained on."""
    n, c, h, w = split.images.shape
    images = np.asarray(split.images).reshape(n * c, 1, h, w)
    return PreparedSplit(images=images, labels=np.asarray(labels, dtype=np.int64).reshape(-1), classes=classes)


@dataclass(frozen=True)
class EvaluatorResult:
    task: str  # "classes" or "rotation"
    train_accuracy: float
    val_accuracy: float
    steps: int


def _rotation_batch(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randint(4, (x.shape[0],), generator=gen)
    return torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k, strict=True)]), k


def _shift(x: torch.Tensor, gen: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Random translation by up to `pixels`: cheap augmentation so features generalise."""
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def _accuracy(net: EvaluatorNet, split: PreparedSplit, task: str, gen: torch.Generator) -> float:
    net.eval()
    correct = total = 0
    for i in range(0, len(split.labels), 512):
        x = to_float(split.images[i : i + 512])
        y = torch.as_tensor(split.labels[i : i + 512])
        if task == "rotation":
            x, y = _rotation_batch(x, gen)
        correct += int((net(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_evaluator(
    cfg: EvaluatorConfig,
    train: PreparedSplit,
    val: PreparedSplit,
    out: Path | str,
    seed: int = 0,
    progress: bool = True,
    per_channel: int = 0,
) -> EvaluatorResult:
    """Train the evaluator on `train`, measure it on `val`, save it atomically to `out`. `per_channel`:
    the splits are single channels (`channel_split`) of images with that many channels, which the
    saved evaluator is applied to channel by channel."""
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed + 99)
    task = "classes" if train.num_classes >= 2 else "rotation"
    num_outputs = train.num_classes if task == "classes" else 4
    _, channels, size, _ = train.images.shape
    net = EvaluatorNet(channels, num_outputs, cfg.features)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    images, labels = to_float(train.images), torch.as_tensor(train.labels)
    net.train()
    for _ in tqdm(range(cfg.steps), desc="evaluator", unit="step", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(len(labels), (cfg.batch_size,), generator=gen)
        x, y = _shift(images[idx], gen), labels[idx]
        if task == "rotation":
            x, y = _rotation_batch(x, gen)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    result = EvaluatorResult(
        task=task,
        train_accuracy=_accuracy(net, train, task, gen),
        val_accuracy=_accuracy(net, val, task, gen),
        steps=cfg.steps,
    )
    spec = {
        "channels": channels,
        "image_size": size,
        "num_outputs": num_outputs,
        "features": cfg.features,
        "task": task,
        "classes": train.classes,
        **({"per_channel": per_channel} if per_channel else {}),
    }
    save_torch(out, {"spec": spec, "state_dict": net.state_dict()})
    return result


def load_evaluator(path: Path | str) -> tuple[EvaluatorNet | PerChannel, dict]:
    """The trained evaluator in eval mode, with its spec (task, classes, image size); one trained on single
    channels comes as a `PerChannel`."""
    if not Path(path).is_file():
        raise MissingInput(f"{path}: evaluator missing; run the evaluator stage first")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    spec = blob["spec"]
    net = EvaluatorNet(spec["channels"], spec["num_outputs"], spec["features"])
    net.load_state_dict(blob["state_dict"])
    if spec.get("per_channel"):
        return PerChannel(net, spec["per_channel"]).eval(), spec
    return net.eval(), spec
