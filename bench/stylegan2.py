"""StyleGAN2 against DCGAN at the same resolution: training images/s and FID after the same budget.

    python bench/stylegan2.py                                   # digits at 64 px, 2,000 steps each
    python bench/stylegan2.py --source idx --path /usr/share/fashion-mnist --steps 5000
    python bench/stylegan2.py --source folder --path data/raw/photos --channels 3 --size 64

Made for a GPU (train.device auto picks CUDA), runs anywhere. The data is prepared into a
temporary folder, the evaluator (the FID feature network) trained once, then each
architecture trains for --steps at batch --batch from the same seed and is evaluated with the
same evaluator and sample counts. Both start from params.yaml (the pipeline's defaults, classes
drawn from the noise included); StyleGAN2 adds configs/stylegan2-digits.yaml's settings
(everything but the data and the run length). Prints one JSON line per model and a Markdown
table for docs/benchmarks.md. Calls the library directly: no DVC, no Prefect.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.cli import merge_overlay  # noqa: E402
from pipeline.config import parse_params  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.dataset import load_split  # noqa: E402
from pipeline.metrics.evaluator import train_evaluator  # noqa: E402
from pipeline.tasks import evaluate  # noqa: E402
from pipeline.training.runner import TrainPaths, train  # noqa: E402

PRESET = ROOT / "configs" / "stylegan2-digits.yaml"


def run(args: argparse.Namespace) -> list[dict]:
    data = {"source": args.source, "path": args.path, "image_size": args.size, "channels": args.channels}
    common = {"data": data, "train": {"steps": args.steps, "batch_size": args.batch, "sample_every": 10**9,
                                      "checkpoint_every": 10**9, "log_every": 100}}  # fmt: skip
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())  # what `ganpipe exp` lays a preset over
    preset = yaml.safe_load(PRESET.read_text())
    preset.pop("data", None)
    models = {"dcgan": merge_overlay(defaults, common),
              "stylegan2": merge_overlay(merge_overlay(defaults, preset), common)}  # fmt: skip
    rows = []
    t0 = time.perf_counter()

    def said(what: str) -> None:  # each phase's time as it ends, so a run cut short shows where it was
        print(f"[{time.perf_counter() - t0:7.1f} s] {what}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        base = parse_params(models["dcgan"])
        prepare(base.data, t / "prepared", t / "report.json")
        said("data prepared")
        train_evaluator(base.evaluate.evaluator, load_split(t / "prepared", "train"), load_split(t / "prepared", "val"),
                        t / "evaluator.pt", seed=base.seed, progress=False)  # fmt: skip
        said("evaluator trained")
        for name, raw in models.items():
            params = parse_params(raw)
            paths = TrainPaths(prepared=t / "prepared", checkpoints=t / name / "ckpt", generator=t / name / "g.pt",
                               live_dir=None, samples=t / name / "samples.png")  # fmt: skip
            start = time.perf_counter()
            train(params, paths, progress=False)
            seconds = time.perf_counter() - start
            said(f"{name} trained: {args.steps} steps in {seconds:.1f} s")
            metrics = evaluate(params, paths.generator, t / "evaluator.pt", t / "prepared", comparison_png=None,
                                   figures_dir=None)
            row = {"arch": name, "size": args.size, "steps": args.steps, "batch": args.batch,
                   "train_s": round(seconds, 1), "images_per_s": round(args.steps * args.batch / seconds),
                   "fid": metrics["fid"], "fid_vs_floor": metrics.get("fid_vs_floor"),
                   "precision": metrics.get("precision"), "recall": metrics.get("recall")}  # fmt: skip
            said(f"{name} evaluated")
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="digits", choices=["digits", "idx", "folder"])
    ap.add_argument("--path", default=None)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=1, choices=[1, 3])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    rows = run(args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    print(f"\n{device}, torch {torch.__version__}, {args.source} at {args.size} px, {args.steps} steps of batch "
          f"{args.batch}\n")  # fmt: skip
    print("| arch | images/s | train s | FID | FID / floor | precision | recall |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['images_per_s']:,} | {r['train_s']} | {r['fid']:.3f} | {r['fid_vs_floor']} | "
            f"{r['precision']} | {r['recall']} |"
        )


if __name__ == "__main__":
    main()
