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
from pipeline.data.dataset import load_split
from pipeline.metrics.distance import fid_kid, prdc
from pipeline.metrics.evaluator import EvaluatorNet
from pipeline.metrics.suite import embed, generate
from pipeline.models import build_generator

STEPS = {
    "generate": "generate (untrained default G)",
    "embed_generated": "embed generated (evaluator net)",
    "embed_real": "embed real (evaluator net)",
    "fid_kid": "FID + KID",
    "prdc": "precision / recall / density / coverage",
}


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
        return t | {"total": sum(t.values())}

    passes = [one_pass() for _ in range(ctx.repeats(3))]
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
    }


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
    ])  # fmt: skip
