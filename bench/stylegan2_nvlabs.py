"""StyleGAN2 training speed: ganpipe's engine against NVlabs' stylegan2-ada-pytorch on one GPU.

    python bench/stylegan2_nvlabs.py --nvlabs /path/to/stylegan2-ada-pytorch \
        --resolutions 64 128 --batch 32 --out reports/gpu/stylegan2_nvlabs.json

NVlabs' code is never part of this repository (its licence; and code from elsewhere is not
copied here): the benchmark imports it from a local checkout given with --nvlabs (a `git clone`
of github.com/NVlabs/stylegan2-ada-pytorch) and refuses, in one line, a path that is not one.

What is compared, per resolution, in one process on one device:
  * nvlabs: their Generator, Discriminator, G_ema and StyleGAN2Loss, stepped by a driver written
    here that does per step what their training loop does (phases Gmain, Greg every 4 steps, Dmain,
    Dreg every 16, each with its own Adam step and their lazy-regularisation learning-rate and
    beta scaling; the NaN scrub of gradients; the EMA of G). Their settings as train.py ships
    them: fp16 in the 4 highest resolutions with conv_clamp 256, TF32 off (`nvlabs-tf32` turns
    it on), cudnn.benchmark, conv2d_gradfix/grid_sample_gradfix enabled, and their custom CUDA
    kernels (bias_act, upfirdn2d), which PyTorch builds on first use; whether they built is
    recorded (`nvlabs_kernels`), as a failed build falls back to slow reference code.
    Not measured: their data loader, the per-tick statistics and snapshots, ADA (off on both).
  * ganpipe: `pipeline.training.objectives` (StyleGAN2) stepped as the runner steps it, a host
    sync for the losses every 25 steps; `ganpipe` = precision auto (fp32 with TF32),
    `ganpipe-bf16` = bf16 autocast, `ganpipe-compile` = torch.compile (fp32/TF32; not in the
    default --loops: it compiles for minutes, and recompiles for style mixing's cutoff, a Python int).
Same on both sides: resolution, batch, 3 channels, z and w of 512, a 2-layer mapping network,
the channel table (NVlabs' channel_base / channel_max rule, by default their `--cfg=auto`
values 16384 / 512; ganpipe's own rule caps at 8x the top width, so where it cannot express
the table the benchmark builds ganpipe's networks with that table, and says so), minibatch-std
group 4, style mixing 0.9, path length (weight 2, every 4 G steps, batch shrink 2), lazy R1
every 16 D steps with auto's gamma (0.0002 res^2 / batch), Adam lr 0.0025 betas (0, 0.99), EMA
of G, no augmentation. The data: one fixed random uint8 tensor of --images images on the
device, batches drawn by index, so data loading is not measured. One step = one D and one G
update on a batch of real images; images/s = steps x batch / seconds. ganpipe reuses the D
step's fakes for its G step; NVlabs' loop generates a fresh batch for each (its design).

Timing: each loop warms up (--warmup steps: cudnn autotuning, NVlabs' kernel build,
torch.compile), then every repeat times --steps steps of each loop back to back, the order
reversed every other repeat, torch.cuda.synchronize() around each window. Step counts are
rounded up to whole 16-step cycles, so every window holds the same mix of regularisation
steps. Reported: the median images/s (min-max) and each ganpipe loop's median per-repeat
ratio to `nvlabs`.

Expected run time on one H100 at the defaults (64 and 128 px, batch 32, 3 loops, 32 warm-up and
3 x 64 timed steps each): about 4-7 min, 1-2 min of it building NVlabs' plugins; --loops
nvlabs ganpipe ganpipe-bf16 ganpipe-compile adds a few minutes of compiling.
The estimate: NVlabs' README gives 12.8-13.7 s/kimg at 128 px on one V100 (~75 img/s), issue 30
quotes about 147 img/s on an A100; at ~150-250 img/s on an H100, 3 x 224 steps of batch 32
take 1.5-2.5 min at 128 px and under half that at 64 px.

--allow-cpu runs without CUDA: a smoke test of the script (tiny sizes; fp32, no NVlabs fp16, no
bf16/compile loops); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.config import parse_params  # noqa: E402
from pipeline.models import stylegan2 as sg2  # noqa: E402
from pipeline.runtime import resolve_precision  # noqa: E402
from pipeline.training.distributed import World  # noqa: E402
from pipeline.training.objectives import make_objective  # noqa: E402

CYCLE = 16  # D's lazy R1 interval; G's path length (every 4) divides it
NVLABS_FILES = ("training/networks.py", "training/loss.py", "training/training_loop.py",
                "torch_utils/ops/upfirdn2d.py", "torch_utils/ops/bias_act.py", "dnnlib/__init__.py")  # fmt: skip
GANPIPE_LOOPS = ("ganpipe", "ganpipe-bf16", "ganpipe-compile")
NVLABS_LOOPS = ("nvlabs", "nvlabs-tf32")
LOOPS = NVLABS_LOOPS + GANPIPE_LOOPS


class Refusal(SystemExit):
    """A one-line refusal: the message on stderr, exit status 1."""

    def __init__(self, message: str):
        super().__init__(f"stylegan2_nvlabs: {message}")


def nvlabs_problem(path: Path) -> str | None:
    """Why `path` is not a checkout of NVlabs' stylegan2-ada-pytorch (None: it looks like one)."""
    if not path.is_dir():
        return f"{path} is not a directory"
    missing = [f for f in NVLABS_FILES if not (path / f).is_file()]
    if missing:
        return f"{path} is not a checkout of NVlabs/stylegan2-ada-pytorch (no {', '.join(missing[:3])})"
    nets, loss = (path / "training/networks.py").read_text(), (path / "training/loss.py").read_text()
    if "class Generator" not in nets or "class StyleGAN2Loss" not in loss:
        return f"{path}: training/ lacks Generator or StyleGAN2Loss: not stylegan2-ada-pytorch"
    return None


def check_args(args: argparse.Namespace) -> torch.device:
    """The device to run on, or a Refusal: no CUDA without --allow-cpu, bad sizes, not a checkout."""
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise Refusal("no CUDA device: this compares GPU training speed (--allow-cpu runs a tiny smoke test)")
    for r in args.resolutions:
        if r < 8 or r & (r - 1):
            raise Refusal(f"resolution {r} is not a power of two >= 8")
    if args.batch < 2 or args.batch % min(4, args.batch):  # NVlabs' minibatch-std groups of min(4, batch)
        raise Refusal(f"--batch {args.batch}: must be 2 or a multiple of 4")
    bad = [name for name in args.loops if name not in LOOPS]
    if bad or not any(n in NVLABS_LOOPS for n in args.loops) or not any(n in GANPIPE_LOOPS for n in args.loops):
        raise Refusal(f"--loops {' '.join(args.loops)}: need one of {NVLABS_LOOPS} and one of {GANPIPE_LOOPS}")
    problem = nvlabs_problem(Path(args.nvlabs).expanduser())
    if problem:
        raise Refusal(problem)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def channel_table(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Channels at each resolution from 4 px up: channel_base / res, at most channel_max (NVlabs' rule)."""
    return {4 * 2**i: min(channel_base // (4 * 2**i), channel_max) for i in range(int(math.log2(resolution)) - 1)}


def ganpipe_width(table: dict[int, int], resolution: int) -> int | None:
    """The model.g_channels that gives `table` by ganpipe's own rule, or None when no width does."""
    w = table[resolution]
    return w if sg2.widths(w, resolution) == table else None


@contextlib.contextmanager
def ganpipe_widths(table: dict[int, int]):
    """Build ganpipe's StyleGAN2 networks with `table` where model.g_channels cannot express it."""
    own = sg2.widths
    sg2.widths = lambda width, image_size: dict(table)
    try:
        yield
    finally:
        sg2.widths = own


def backends(tf32: bool) -> None:
    """What each side runs with (ganpipe's resolve_device sets these globally on CUDA)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fixed_images(n: int, resolution: int, seed: int = 0) -> np.ndarray:
    """The data both sides train on: random uint8 [n, 3, res, res] (speed does not depend on content)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, resolution, resolution), dtype=np.uint8)


def write_prepared(images: np.ndarray, out: Path) -> Path:
    """The images as a prepared split (what ganpipe's objective reads); no labels used (unconditional)."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "train_images.npy", images)
    np.save(out / "train_labels.npy", np.zeros(len(images), dtype=np.int64))
    (out / "manifest.json").write_text(json.dumps({"classes": ["random"], "files": []}))
    return out


def settings(resolution: int, args: argparse.Namespace) -> dict:
    """The shared hyperparameters (NVlabs' --cfg=auto for one GPU, but the batch is --batch)."""
    return {"z_dim": args.z_dim, "mapping_layers": args.mapping_layers, "mbstd_group": 4,
            "r1_gamma": 0.0002 * resolution**2 / args.batch, "r1_every": CYCLE, "pl_weight": 2.0, "pl_every": 4,
            "pl_batch_shrink": 2, "style_mixing": 0.9, "lr": 0.0025, "betas": (0.0, 0.99),
            "ema_kimg": args.batch * 10 / 32}  # fmt: skip


class Ganpipe:
    """ganpipe's StyleGAN2 objective, stepped as pipeline.training.runner steps it."""

    def __init__(self, variant: str, prepared: Path, table: dict[int, int], s: dict, batch: int,
                 device: torch.device, seed: int = 0):  # fmt: skip
        res = max(table)
        width = ganpipe_width(table, res)
        self.widths_from = f"model.g_channels = d_channels = {width}" if width else "bench override of the width rule"
        compiled = variant == "ganpipe-compile"
        precision = "bf16" if variant == "ganpipe-bf16" else "auto"
        params = parse_params({
            "seed": seed,
            "model": {"arch": "stylegan2", "latent_dim": s["z_dim"], "g_channels": width or table[res],
                      "d_channels": width or table[res], "mapping_layers": s["mapping_layers"],
                      "mbstd_group": s["mbstd_group"]},
            "train": {"batch_size": batch, "lr_g": s["lr"], "lr_d": s["lr"], "betas": list(s["betas"]),
                      "r1_gamma": s["r1_gamma"], "r1_every": s["r1_every"], "style_mixing": s["style_mixing"],
                      "pl_weight": s["pl_weight"], "pl_every": s["pl_every"], "pl_batch_shrink": s["pl_batch_shrink"],
                      "ema_kimg": s["ema_kimg"], "precision": precision, "compile": compiled,
                      "device": device.type},
        })  # fmt: skip
        self.tf32 = True  # resolve_device's setting on CUDA
        backends(self.tf32)
        torch.manual_seed(seed)
        with ganpipe_widths(table) if width is None else contextlib.nullcontext():
            self.objective = make_objective(params, prepared, device, resolve_precision(precision, device), World())
        got = {4: self.objective.G.const.shape[1], res: self.objective.D.from_rgb.weight.shape[0]}
        assert all(got[r] == table[r] for r in got), f"ganpipe built widths {got}, wanted {table}"
        self.log_every, self.k = params.train.log_every, 0
        self.params = {"G": count(self.objective.G), "D": count(self.objective.D)}

    def step(self) -> None:
        self.objective.step(self.k, log_now=(self.k + 1) % self.log_every == 0)
        self.k += 1
        if self.k % self.log_every == 0:
            self.objective.losses()  # the runner's host sync at a logging step


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def import_nvlabs(path: Path) -> dict:
    """NVlabs' modules from the checkout. Their top-level package `training` would collide with
    bench/training.py, so their path goes first and nothing of that name may be loaded yet."""
    loaded = sys.modules.get("training")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(path)):
        del sys.modules["training"]
    sys.path.insert(0, str(path))
    import dnnlib  # noqa: F401
    from torch_utils import misc
    from torch_utils.ops import bias_act, conv2d_gradfix, grid_sample_gradfix, upfirdn2d
    from training import loss, networks

    return {"misc": misc, "bias_act": bias_act, "upfirdn2d": upfirdn2d, "conv2d_gradfix": conv2d_gradfix,
            "grid_sample_gradfix": grid_sample_gradfix, "loss": loss, "networks": networks}  # fmt: skip


class NVlabs:
    """NVlabs' networks and loss, stepped the way their training loop steps them (one GPU, no
    gradient accumulation: batch_gpu = batch), over the same in-memory data."""

    def __init__(self, nv: dict, variant: str, images: torch.Tensor, table: dict[int, int], s: dict, batch: int,
                 device: torch.device, fp16_res: int, seed: int = 0):  # fmt: skip
        res = max(table)
        channel_base, channel_max = table[res] * res, max(table.values())
        assert channel_table(res, channel_base, channel_max) == table
        self.tf32 = variant == "nvlabs-tf32"
        backends(self.tf32)
        nv["conv2d_gradfix"].enabled = True  # as their training loop sets them
        nv["grid_sample_gradfix"].enabled = True
        torch.manual_seed(seed)
        precision = {"num_fp16_res": fp16_res, "conv_clamp": 256 if fp16_res else None}
        nets = nv["networks"]
        self.G = nets.Generator(z_dim=s["z_dim"], c_dim=0, w_dim=s["z_dim"], img_resolution=res, img_channels=3,
                                mapping_kwargs={"num_layers": s["mapping_layers"]},
                                synthesis_kwargs={"channel_base": channel_base, "channel_max": channel_max,
                                                  **precision})  # fmt: skip
        self.D = nets.Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=channel_base,
                                    channel_max=channel_max, **precision,
                                    epilogue_kwargs={"mbstd_group_size": s["mbstd_group"]})  # fmt: skip
        self.G = self.G.train().requires_grad_(False).to(device)
        self.D = self.D.train().requires_grad_(False).to(device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.loss = nv["loss"].StyleGAN2Loss(
            device=device, G_mapping=self.G.mapping, G_synthesis=self.G.synthesis, D=self.D,
            style_mixing_prob=s["style_mixing"], r1_gamma=s["r1_gamma"], pl_batch_shrink=s["pl_batch_shrink"],
            pl_weight=s["pl_weight"],
        )  # fmt: skip
        self.phases = []
        for name, module, interval in (("G", self.G, s["pl_every"]), ("D", self.D, s["r1_every"])):
            ratio = interval / (interval + 1)  # lazy regularisation's lr and beta scaling
            opt = torch.optim.Adam(module.parameters(), lr=s["lr"] * ratio, betas=[b**ratio for b in s["betas"]],
                                   eps=1e-8)  # fmt: skip
            self.phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
        self.nan_to_num = nv["misc"].nan_to_num
        self.images, self.batch, self.z_dim, self.device = images, batch, s["z_dim"], device
        self.c = torch.zeros([batch, 0], device=device)
        self.ema_beta = 0.5 ** (batch / (s["ema_kimg"] * 1000))
        self.k = 0
        self.params = {"G": count(self.G), "D": count(self.D)}
        self.kernels = "reference (CPU)"
        if device.type == "cuda":  # build their plugins now (PyTorch's cpp_extension: nvcc and ninja needed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                built = [nv["bias_act"]._init(), nv["upfirdn2d"]._init()]
            why = [str(w.message).strip().splitlines()[-1] for w in caught if "Failed to build" in str(w.message)]
            self.kernels = "custom CUDA (bias_act, upfirdn2d)" if all(built) else \
                f"reference: their CUDA build failed ({'; '.join(why)[:300]})"  # fmt: skip

    def step(self) -> None:
        idx = torch.randint(len(self.images), (self.batch,), device=self.device)
        real = self.images[idx].to(torch.float32) / 127.5 - 1
        all_z = torch.randn([len(self.phases) * self.batch, self.z_dim], device=self.device).split(self.batch)
        for (name, module, opt, interval), z in zip(self.phases, all_z, strict=True):
            if self.k % interval:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            self.loss.accumulate_gradients(phase=name, real_img=real, real_c=self.c, gen_z=z, gen_c=self.c,
                                           sync=True, gain=interval)  # fmt: skip
            module.requires_grad_(False)
            for p in module.parameters():
                if p.grad is not None:
                    self.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            opt.step()
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
                p_ema.copy_(p.lerp(p_ema, self.ema_beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                b_ema.copy_(b)
        self.k += 1


def images_per_s(loop, steps: int, batch: int, device: torch.device) -> float:
    backends(loop.tf32)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        loop.step()
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def measure(resolution: int, args: argparse.Namespace, device: torch.device, nv: dict, say) -> dict:
    table = channel_table(resolution, args.channel_base, args.channel_max)
    s = settings(resolution, args)
    cycles = lambda n: CYCLE * max(1, math.ceil(n / CYCLE))  # noqa: E731
    warmup, steps = cycles(args.warmup), cycles(args.steps)
    loops = [n for n in args.loops if device.type == "cuda" or n in ("nvlabs", "ganpipe")]
    fp16_res = args.num_fp16_res if device.type == "cuda" else 0
    data = fixed_images(args.images, resolution)
    row = {"resolution": resolution, "batch": args.batch, "channels": {str(r): c for r, c in table.items()},
           "settings": s, "warmup_steps": warmup, "steps": steps, "repeats": args.repeats,
           "nvlabs_num_fp16_res": fp16_res, "loops": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        prepared = write_prepared(data, Path(tmp) / "prepared")
        images = torch.from_numpy(data).to(device)
        built = {}
        for name in loops:
            t0 = time.perf_counter()
            if name in NVLABS_LOOPS:
                built[name] = NVlabs(nv, name, images, table, s, args.batch, device, fp16_res)
            else:
                built[name] = Ganpipe(name, prepared, table, s, args.batch, device)
            images_per_s(built[name], warmup, args.batch, device)
            say(f"{resolution} px {name}: built and warmed up ({warmup} steps) in {time.perf_counter() - t0:.1f} s")
        rates = {name: [] for name in loops}
        for r in range(args.repeats):
            for name in loops if r % 2 == 0 else loops[::-1]:
                rates[name].append(images_per_s(built[name], steps, args.batch, device))
            say(f"{resolution} px repeat {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in loops))
        base = next(n for n in loops if n in NVLABS_LOOPS)
        for name in loops:
            v = rates[name]
            entry = {"images_per_s": {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v},
                     "params": built[name].params}  # fmt: skip
            if name in GANPIPE_LOOPS:
                q = [a / b for a, b in zip(v, rates[base], strict=True)]
                entry["ratio_to_" + base] = {"median": statistics.median(q), "min": min(q), "max": max(q)}
                entry["widths_from"] = built[name].widths_from
            else:
                entry["kernels"] = built[name].kernels
                entry["tf32"] = built[name].tf32
            row["loops"][name] = entry
        row["baseline"] = base
    return row


def table_lines(rows: list[dict]) -> list[str]:
    gan = [n for n in GANPIPE_LOOPS if any(n in r["loops"] for r in rows)]
    nvl = [n for n in NVLABS_LOOPS if any(n in r["loops"] for r in rows)]
    head = ["resolution", "batch"] + [f"{n} img/s" for n in nvl + gan] + [f"{n} ÷ {rows[0]['baseline']}" for n in gan]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['resolution']} px", str(r["batch"])]
        for n in nvl + gan:
            e = r["loops"].get(n)
            m = e and e["images_per_s"]
            cells.append(f"{m['median']:,.1f} ({m['min']:,.1f}–{m['max']:,.1f})" if m else "–")
        for n in gan:
            e = r["loops"].get(n)
            q = e and e["ratio_to_" + r["baseline"]]
            cells.append(f"**{q['median']:.2f}×** ({q['min']:.2f}–{q['max']:.2f})" if q else "–")
        out.append("| " + " | ".join(cells) + " |")
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvlabs", required=True, help="a local checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64, help="timed steps per loop per repeat (whole 16-step cycles)")
    ap.add_argument("--warmup", type=int, default=32, help="untimed steps per loop first (whole 16-step cycles)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loops", nargs="+", default=["nvlabs", "ganpipe", "ganpipe-bf16"],
                    help=f"of {', '.join(LOOPS)}; the first nvlabs one is the ratios' base (ganpipe-compile: "
                    "minutes of compiling first)")  # fmt: skip
    ap.add_argument("--channel-base", type=int, default=16384, help="NVlabs' channel_base (cfg auto: 16384)")
    ap.add_argument("--channel-max", type=int, default=512, help="NVlabs' channel_max (512)")
    ap.add_argument("--z-dim", type=int, default=512, help="z and w length (NVlabs: 512)")
    ap.add_argument("--mapping-layers", type=int, default=2, help="cfg auto: 2; paper256: 8")
    ap.add_argument("--num-fp16-res", type=int, default=4, help="NVlabs' fp16 resolutions (train.py: 4)")
    ap.add_argument("--images", type=int, default=1024, help="size of the fixed random dataset on the device")
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-test on the CPU (tiny sizes; numbers mean nothing)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    device = check_args(args)
    t0 = time.perf_counter()

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {what}", file=sys.stderr, flush=True)

    nvlabs = Path(args.nvlabs).expanduser().resolve()
    nv = import_nvlabs(nvlabs)
    rows = [measure(r, args, device, nv, say) for r in args.resolutions]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    result = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "nvlabs_path": str(nvlabs), "date": time.strftime("%Y-%m-%d"),
              "seconds": round(time.perf_counter() - t0, 1), "rows": rows}  # fmt: skip
    print(f"\n{name}, torch {torch.__version__}; NVlabs kernels: "
          f"{rows[0]['loops'][rows[0]['baseline']]['kernels']}; {result['seconds']} s\n")  # fmt: skip
    print("\n".join(table_lines(rows)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
