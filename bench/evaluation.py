"""Evaluation throughput: what the evaluate stage's steps cost for N generated images scored
against N real ones, on the benchmark's device, with the suite's own functions."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from common import Context, fmt, summary, sync
from torch import nn

from pipeline.config import Params
from pipeline.dataset import load_split
from pipeline.errors import MissingInput
from pipeline.metrics.distance import fid_kid, prdc
from pipeline.metrics.evaluator import EvaluatorNet
from pipeline.metrics.features import InceptionFeatures, embed
from pipeline.metrics.probe import generate
from pipeline.metrics.suite import bootstrap_fid, classifier_scores, copy_share, nearest
from pipeline.models import build_generator

STEPS = {
    "generate": "generate (untrained default G)",
    "embed_generated": "embed generated (evaluator net)",
    "embed_real": "embed real (evaluator net)",
    "fid_kid": "FID + KID",
    "prdc": "precision / recall / density / coverage",
    "classifier": "confidence + classifier score (evaluator softmax)",
    "bootstrap": "FID 95% interval (50 bootstrap FIDs)",
    "memorisation": "copy share (nearest real image of every sample)",
}
INCEPTION_IMAGES = 64  # the Inception extractor's throughput is measured on this many images


class OnDevice(nn.Module):
    """`net` on `device`, taking its inputs from wherever they are: suite.generate draws its noise and
    suite.embed converts uint8 images on the CPU (the evaluate stage runs there)."""

    def __init__(self, net: nn.Module, device: torch.device):
        super().__init__()
        self.net, self.device = net.to(device), device

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z.to(self.device), None if labels is None else labels.to(self.device))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x.to(self.device))


def _timed(fn: Callable, device: torch.device) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def run(ctx: Context) -> dict:
    params, n = Params(), 1_000 if ctx.quick else 10_000
    ev, seed = params.evaluate, params.seed
    train, val = load_split(ctx.prepared, "train"), load_split(ctx.prepared, "val")
    pool = np.concatenate([np.asarray(val.images), np.asarray(train.images)])
    real = np.resize(pool, (n, *pool.shape[1:]))  # the prepared images, repeated in order up to n
    _, channels, size, _ = pool.shape
    torch.manual_seed(seed)
    g = OnDevice(build_generator(params.model, size, channels, 0), ctx.device).eval()
    net = OnDevice(EvaluatorNet(channels, train.num_classes, ev.evaluator.features), ctx.device).eval()
    embed(net, generate(g, 512, params.model.latent_dim, 0, seed, ev.batch_size)[0], ev.batch_size)  # warm-up

    def one_pass() -> dict[str, float]:
        t, dev, latent = {}, ctx.device, params.model.latent_dim
        fakes, t["generate"] = _timed(lambda: generate(g, n, latent, 0, seed, ev.batch_size)[0], dev)
        fake_f, t["embed_generated"] = _timed(lambda: embed(net, fakes, ev.batch_size).cpu(), dev)
        real_f, t["embed_real"] = _timed(lambda: embed(net, real, ev.batch_size).cpu(), dev)
        _, t["fid_kid"] = _timed(lambda: fid_kid(real_f, fake_f, ev.kid_subset_size, ev.kid_subsets, seed), dev)
        _, t["prdc"] = _timed(lambda: prdc(real_f, fake_f), dev)
        with torch.no_grad():
            _, t["classifier"] = _timed(lambda: classifier_scores(net.net.classifier(fake_f.to(dev)).softmax(1)), dev)
        _, t["bootstrap"] = _timed(lambda: bootstrap_fid(real_f, fake_f, seed=seed), dev)
        half = n // 2  # the real floor's distances: one half of the real images to the other
        floor_nn = lambda: nearest(real_f[:half], real_f[half:])[0]  # noqa: E731
        _, t["memorisation"] = _timed(lambda: copy_share(nearest(fake_f, real_f)[0], floor_nn()), dev)
        return t | {"total": sum(t.values())}

    passes = [one_pass() for _ in range(ctx.repeats(3))]
    inception = _inception_rate(real[:INCEPTION_IMAGES])
    times = {k: [t[k] for t in passes] for k in [*STEPS, "total"]}
    steps = {k: {"seconds": summary(ts, 3), "images_per_s": summary([n / t for t in ts])} for k, ts in times.items()}
    return {
        "images": n,
        "device": str(ctx.device),
        "image_shape": [channels, size, size],
        "real": f"{n:,} of the {len(pool):,} prepared val + train images" + (", repeated" if n > len(pool) else ""),
        "generator": f"{params.model.arch}, latent {params.model.latent_dim}, g_channels {params.model.g_channels}",
        "evaluator_features": ev.evaluator.features,
        "batch_size": ev.batch_size,
        "kid": {"subset_size": ev.kid_subset_size, "subsets": ev.kid_subsets},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": steps,
        "total_under_one_minute_for_10k": steps["total"]["seconds"]["median"] < 60 if n == 10_000 else None,
        "inception": inception,
    }


def _inception_rate(images: np.ndarray) -> dict:
    """Images/s of the standard FID Inception network (299x299, CPU), when its extra is installed."""
    try:
        extractor = InceptionFeatures(batch_size=32, progress=False)
    except MissingInput as err:
        return {"skipped": str(err)}
    extractor(images[:2])  # warm-up
    start = time.perf_counter()
    extractor(images)
    seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": round(seconds, 2), "images_per_s": round(len(images) / seconds, 2),
            "threads": torch.get_num_threads()}  # fmt: skip


def markdown(result: dict) -> str:
    title = "### Evaluation throughput"
    if "skipped" in result:
        return f"{title}\n\nSkipped: {result['skipped']}\n"
    n, verdict = result["images"], result["total_under_one_minute_for_10k"]
    rows = [(STEPS.get(k, "**total**"), s) for k, s in result["steps"].items()]
    table = [f"| {label} | {fmt(s['seconds'], ' s')} | {fmt(s['images_per_s'])} |" for label, s in rows]
    answer = "not assessed (quick run)" if verdict is None else ("yes" if verdict else "no")
    return "\n".join([
        title, "",
        f"Seconds and images/s (median of {result['steps']['total']['seconds']['repeats']} repeats, min–max) of each "
        f"step of scoring {n:,} generated {'x'.join(map(str, result['image_shape'][1:]))} images against {n:,} real "
        f"ones ({result['real']}) on {result['device']}, with pipeline.metrics' own functions: generate and embed "
        f"(untrained evaluator net, {result['evaluator_features']}-d features) on the device in batches of "
        f"{result['batch_size']}, FID + KID ({result['kid']['subsets']} subsets of {result['kid']['subset_size']}) and "
        f"precision/recall/density/coverage (k = 5) on the CPU, as the library computes them. "
        f"Total under one minute for 10,000 images: {answer}.", "",
        "| step | seconds | images/s |", "|---|---|---|", *table, "",
        _inception_line(result.get("inception", {})), "",
    ])  # fmt: skip


def _inception_line(r: dict) -> str:
    if "images_per_s" not in r:
        return f"Inception extractor: not measured ({r.get('skipped', 'no result')})."
    return (f"Inception extractor (`evaluate.feature_extractor: inception`, 299x299, on the CPU with {r['threads']} "
            f"threads): {r['images_per_s']} images/s ({r['images']} images in {r['seconds']} s), so 10,000 images take "
            f"about {10_000 / r['images_per_s'] / 60:.0f} min; the reference stage embeds the real images once.")
