"""Training throughput: ganpipe's engine against a textbook loop on the same models and data,
and the engine's scaling over batch size and resolution.

The textbook loop is pytorch/examples' DCGAN loop (BCE on logits, D on real, D on the
detached fakes, one D step, G step through D, `.item()` of each loss, fp32), written here
over ganpipe's own G and D modules and the same data tensor on the device; its batches are
index gathers drawn on the device, as the engine's are. The engine is
`pipeline.training.objectives` driven the way `pipeline.training.runner.train` drives it: one
`step()` per iteration and a host sync for the losses every `train.log_every` steps. Both run
side by side in one process: each repeat times every loop for the same number of steps, the
order reversed every other repeat so that neither side always runs first.

    python bench/training.py point --size 64 --batch 256 --device cuda   # one scaling point (JSON)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from common import Context, fmt, rate, summary  # noqa: E402

from pipeline.config import Params, parse_params  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.dataset import load_split, to_float  # noqa: E402
from pipeline.models import build_discriminator, build_generator  # noqa: E402
from pipeline.runtime import resolve_device, resolve_precision  # noqa: E402
from pipeline.training.distributed import World  # noqa: E402
from pipeline.training.objectives import make_objective  # noqa: E402


def prepared_at(tmp: Path, size: int, channels: int) -> Path:
    """The digits prepared at `size` px and `channels` channels (cached under tmp)."""
    out = tmp / f"digits_{size}px_{channels}ch"
    if not (out / "manifest.json").is_file():
        params = parse_params({"data": {"image_size": size, "channels": channels}})
        prepare(params.data, out, tmp / f"report_{size}_{channels}.json")
    return out


def params_for(size: int, channels: int, batch: int, device: torch.device, **train) -> Params:
    return parse_params({"data": {"image_size": size, "channels": channels},
                         "train": {"batch_size": batch, "device": device.type, **train}})  # fmt: skip


class Engine:
    """ganpipe's objective, stepped as the runner steps it."""

    def __init__(self, params: Params, prepared: Path, device: torch.device):
        self.objective = make_objective(params, prepared, device, resolve_precision(params.train.precision, device),
                                        World())  # fmt: skip
        self.log_every, self.k = params.train.log_every, 0

    def step(self) -> None:
        self.objective.step(self.k, log_now=(self.k + 1) % self.log_every == 0)
        self.k += 1
        if self.k % self.log_every == 0:
            self.objective.losses()  # the runner's host sync at a logging step


class Textbook:
    """pytorch/examples' DCGAN training loop over the same modules. `tuned` adds what a
    practitioner tuning a plain loop for a GPU would: bf16 autocast, fused Adam, channels-last."""

    def __init__(self, params: Params, prepared: Path, device: torch.device, tuned: bool = False):
        torch.manual_seed(params.seed)
        data = load_split(prepared, "train")
        self.images = to_float(data.images).to(device)
        _, channels, size, _ = self.images.shape
        self.G = build_generator(params.model, size, channels).to(device)
        self.D = build_discriminator(params.model, size, channels).to(device)
        self.tuned = tuned and device.type == "cuda"
        if self.tuned:
            self.G, self.D = self.G.to(memory_format=torch.channels_last), self.D.to(memory_format=torch.channels_last)
        cfg = params.train
        fused = True if self.tuned else None
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas, fused=fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas, fused=fused)
        self.batch, self.latent, self.device = cfg.batch_size, params.model.latent_dim, device
        self.real_label = torch.ones(self.batch, device=device)
        self.fake_label = torch.zeros(self.batch, device=device)

    def _d(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.tuned):
            return self.D(x, None)[0].view(-1).float()

    def step(self) -> None:
        real = self.images[torch.randint(len(self.images), (self.batch,), device=self.device)]
        self.D.zero_grad()
        out = self._d(real)
        err_real = F.binary_cross_entropy_with_logits(out, self.real_label)
        err_real.backward()
        err_real.item()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.tuned):
            fake = self.G(torch.randn(self.batch, self.latent, device=self.device), None)
        out = self._d(fake.detach())
        err_fake = F.binary_cross_entropy_with_logits(out, self.fake_label)
        err_fake.backward()
        err_fake.item()
        self.opt_d.step()
        self.G.zero_grad()
        out = self._d(fake)
        err_g = F.binary_cross_entropy_with_logits(out, self.real_label)
        err_g.backward()
        err_g.item()
        self.opt_g.step()


def _variants(device: torch.device, size: int, batch: int) -> dict[str, dict]:
    """Engine settings compared with the textbook loop: the defaults a user gets (full precision,
    TF32 on a GPU); on a GPU bf16 autocast too, and torch.compile at the largest case (compiling
    costs a minute per case)."""
    if device.type != "cuda":
        return {"engine": {}}
    out = {"engine": {}, "engine bf16": {"precision": "bf16"}}
    return {**out, "engine compile": {"compile": True}} if (size, batch) == (64, 256) else out


def _calls_for(loops: dict, device: torch.device, seconds: float) -> int:
    """Steps per timed repeat so that the slowest loop takes about `seconds`."""
    slowest = max(1.0 / rate(loop.step, 1, 3, device) for loop in loops.values())
    return max(3, round(seconds / slowest))


def compare(ctx: Context, size: int, channels: int, batch: int) -> dict:
    """One row: images/s of the textbook loop and of each engine variant, side by side."""
    prepared = prepared_at(ctx.tmp, size, channels)
    base = params_for(size, channels, batch, ctx.device)
    loops: dict = {"textbook": Textbook(base, prepared, ctx.device)}
    if ctx.device.type == "cuda":
        loops["textbook tuned"] = Textbook(base, prepared, ctx.device, tuned=True)
    errors = {}
    for name, over in _variants(ctx.device, size, batch).items():
        try:
            loops[name] = Engine(params_for(size, channels, batch, ctx.device, **over), prepared, ctx.device)
            for _ in range(3):  # warm-up: cuDNN autotuning, compilation
                loops[name].step()
        except Exception as e:  # a variant that fails is reported, not fatal
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            loops.pop(name, None)
    seconds = 0.5 if ctx.quick else (1.0 if ctx.device.type == "cuda" else 2.0)
    calls = _calls_for(loops, ctx.device, seconds)
    measured: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(ctx.repeats(7)):
        order = list(loops.items())  # alternate the order, so neither side always runs first
        for name, loop in order if r % 2 == 0 else reversed(order):
            measured[name].append(rate(loop.step, batch, calls, ctx.device))
    row = {"size": size, "channels": channels, "batch": batch, "steps_per_repeat": calls,
           "images_per_s": {name: summary(v, 0) for name, v in measured.items()}}  # fmt: skip
    # each repeat timed every loop back to back: the ratio of a repeat's pair cancels the machine's
    # drift between repeats, so the ratio reported is the median of the per-repeat ratios
    paired = {name: [e / t for e, t in zip(v, measured["textbook"], strict=True)] for name, v in measured.items()
              if name != "textbook"}  # fmt: skip
    row["ratio_to_textbook"] = {name: round(statistics.median(v), 2) for name, v in paired.items()}
    row["ratio_to_textbook_range"] = {name: [round(min(v), 2), round(max(v), 2)] for name, v in paired.items()}
    if errors:
        row["errors"] = errors
    del loops
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_compare(ctx: Context) -> dict:
    cases = [(32, 1, 64)] if ctx.quick else [(32, 1, 64), (32, 1, 256), (64, 3, 64), (64, 3, 256)]
    return {"rows": [compare(ctx, *case) for case in cases]}


# -- scaling: one fresh process per point, so peak memory is that point's own -----------------
def point(size: int, batch: int, device: torch.device, seconds: float, repeats: int, tmp: Path) -> dict:
    channels = 3 if size > 32 else 1
    prepared = prepared_at(tmp, size, channels)
    engine = Engine(params_for(size, channels, batch, device), prepared, device)
    for _ in range(3):
        engine.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    calls = max(3, round(seconds * rate(engine.step, 1, 2, device)))
    figure = summary([rate(engine.step, batch, calls, device) for _ in range(repeats)], 0)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # the whole process's peak resident memory
        memory = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) / 1024
    return {"size": size, "channels": channels, "batch": batch, "images_per_s": figure, "peak_memory_mb": round(memory)}


def run_scaling(ctx: Context) -> dict:
    if ctx.quick:
        grid = [(32, 32), (32, 64)]
    elif ctx.device.type == "cuda":
        grid = [(s, b) for s in (32, 64, 128) for b in (64, 256, 1024)]
    else:
        grid = [(s, b) for s in (32, 64) for b in (32, 64, 128, 256)]
    points = []
    for size, batch in grid:
        cmd = [sys.executable, __file__, "point", "--size", str(size), "--batch", str(batch),
               "--device", ctx.device.type, "--seconds", "0.5" if ctx.quick else "1",
               "--repeats", str(ctx.repeats(3)), "--tmp", str(ctx.tmp)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            points.append({"size": size, "batch": batch, "error": (out.stderr.strip().splitlines() or ["?"])[-1][:300]})
        else:
            points.append(json.loads(out.stdout.strip().splitlines()[-1]))
    memory_kind = "torch.cuda.max_memory_allocated" if ctx.device.type == "cuda" else "process peak RSS (VmHWM)"
    precision = resolve_precision(Params().train.precision, ctx.device)
    return {"points": points, "memory": memory_kind, "precision": "fp32 (TF32 on CUDA)" if precision is None else
            f"{precision} autocast".replace("torch.", "")}  # fmt: skip


def scaling_figure(result: dict, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for size in sorted({p["size"] for p in result["points"] if "error" not in p}):
        pts = [p for p in result["points"] if p["size"] == size and "error" not in p]
        b = [p["batch"] for p in pts]
        ax1.errorbar(b, [p["images_per_s"]["median"] for p in pts], marker="o", label=f"{size} px",
                     yerr=[[p["images_per_s"]["median"] - p["images_per_s"]["min"] for p in pts],
                           [p["images_per_s"]["max"] - p["images_per_s"]["median"] for p in pts]])  # fmt: skip
        ax2.plot(b, [p["peak_memory_mb"] for p in pts], marker="o", label=f"{size} px")
    for ax, ylabel in ((ax1, "training images/s (median, min–max)"), (ax2, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_title("throughput")
    ax2.set_title(f"memory ({result['memory']})", fontsize=10)
    fig.suptitle(f"{title}; {result.get('precision', 'default precision')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_compare(result: dict) -> str:
    rows = result["rows"]
    names = list(dict.fromkeys(n for r in rows for n in r["images_per_s"]))
    head = "| case | " + " | ".join(names) + " | " + " | ".join(f"{n} ÷ textbook" for n in names if n != "textbook")
    lines = [
        "### Training: the engine against a textbook loop",
        "",
        "Images/s (median of the repeats, min–max) of pytorch/examples' DCGAN loop and of ganpipe's engine on the "
        "same G and D modules and the same data in device memory, measured side by side in one process (the "
        "order of the loops reversed every other repeat); a ratio is the median (min–max) of the repeats' "
        "ratios, each of two loops timed back to back. The "
        "engine runs the default recipe (non-saturating loss, EMA of G, `precision: auto`) and syncs for its "
        "losses every 25 steps as the runner does. *textbook tuned* adds bf16 autocast, fused Adam and "
        "channels-last to the plain loop (GPU only).",
        "",
        head + " |",
        "|" + "---|" * (1 + 2 * len(names) - 1),
    ]
    for r in rows:
        case = f"{r['size']} px × {r['channels']} ch, batch {r['batch']}"
        cells = [fmt(r["images_per_s"].get(n)) for n in names]
        spans = r.get("ratio_to_textbook_range", {})
        ratios = [(f"**{r['ratio_to_textbook'][n]:.2f}×**" + (f" ({spans[n][0]:.2f}–{spans[n][1]:.2f})" if n in spans
                                                                else "")) if n in r["ratio_to_textbook"] else
                  ("failed" if n in r.get("errors", {}) else "–") for n in names if n != "textbook"]  # fmt: skip
        lines.append(f"| {case} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    errors = {n: e for r in rows for n, e in r.get("errors", {}).items()}
    for name, err in errors.items():
        lines += ["", f"*{name}* failed: `{err}`"]
    return "\n".join(lines)


def markdown_scaling(result: dict, image: str | None = None) -> str:
    lines = [
        "### Training: scaling over batch size and resolution",
        "",
        f"The engine with the default recipe ({result.get('precision', 'default precision')}), one fresh process "
        f"per point (64 px and above: 3 channels); memory is the {result['memory']}.",
        "",
        "| resolution | batch | images/s | peak memory (MiB) |",
        "|---|---|---|---|",
    ]
    for p in result["points"]:
        if "error" in p:
            lines.append(f"| {p['size']} px | {p['batch']} | failed: {p['error']} | – |")
        else:
            lines.append(f"| {p['size']} px | {p['batch']} | {fmt(p['images_per_s'])} | {p['peak_memory_mb']:,} |")
    if image:
        lines += ["", f"![scaling]({image})"]
    return "\n".join(lines)


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["point"])
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", type=Path, required=True)
    a = ap.parse_args()
    device = resolve_device(a.device)
    print(json.dumps(point(a.size, a.batch, device, a.seconds, a.repeats, a.tmp)))


if __name__ == "__main__":
    _main()
