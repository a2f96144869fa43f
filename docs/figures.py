"""Make the documentation's figures (docs/images/*.png) from the configurations the docs name.

Each configuration runs as a DVC experiment named after it (`dvc exp run --temp`: in a temporary
copy of the workspace, which stays as it is). An experiment of that name whose params and whose
code (every dependency dvc.yaml lists) are the workspace's is reused instead of run again, so a
second run costs seconds. The figures sample each experiment's exported ONNX model with fixed
seeds and label every panel with its configuration and FID (its metrics/eval.json).

    python docs/figures.py --list
    python docs/figures.py digits10_augment          # one figure, or several
    python docs/figures.py all
    python docs/figures.py all --overlay quick.yaml --out /tmp/figures   # a trial run: the overlay is
        # laid over every configuration, and its name ends the experiments' names
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, whichever one is installed

from flows.cli import merge_overlay, overrides  # noqa: E402
from flows.stage import tool_env  # noqa: E402
from pipeline import layout  # noqa: E402
from pipeline.config import parse_params, read_yaml  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.grid import labelled_figure, save_figure  # noqa: E402
from pipeline.inference import OnnxGenerator, OnnxTranslator  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT = "params.yaml"  # the default run: no overlay
SEED = 0


@dataclass
class Run:
    """One finished experiment: its commit, params and eval metrics, and its files on demand."""

    config: str
    rev: str
    params: dict
    metrics: dict
    workdir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def read(self, path: Path | str) -> bytes:
        import dvc.api

        return dvc.api.read(str(path), repo=str(ROOT), rev=self.rev, mode="rb")

    def array(self, name: str) -> np.ndarray:
        """An array of the experiment's prepared dataset, e.g. val_images.npy."""
        return np.load(io.BytesIO(self.read(layout.PREPARED / name)))

    def model(self, path: Path) -> OnnxGenerator | OnnxTranslator:
        if path not in self.files:
            self.files[path] = self.workdir / f"{self.rev}-{path.name}"
            self.files[path].write_bytes(self.read(path))
        kind = OnnxTranslator if self.params["task"] == "translate" else OnnxGenerator
        return kind(self.files[path], device="cpu")  # the same pixels on any machine

    def label(self, note: str = "", more: str = "") -> str:
        """The configuration's name (a configs/*.yaml stem, or params.yaml) and, below, its FID."""
        name = self.config if self.config == DEFAULT else Path(self.config).stem
        return f"{name}{note}\nFID {self.metrics['fid']:.3f}{more}"


def samples(run: Run, n: int) -> np.ndarray:
    """n samples from seed 0; conditional models: 8 of each class, one class per grid row."""
    g = run.model(layout.ONNX_GENERATOR)
    labels = [c for c in range(g.info.num_classes) for _ in range(8)] or None
    return g.generate(len(labels) if labels else n, seed=SEED, labels=labels)


def digits_samples(runs: list[Run]) -> Figure:
    (run,) = runs
    return labelled_figure([samples(run, 64)], [run.label()], "digits: samples of the trained generator", 8, scale=3)


def configs(runs: list[Run]) -> Figure:
    labels = [r.label(" (one class per row)" if r.params["model"]["conditional"] else "") for r in runs]
    title = "the shipped configurations on the digits (same budget of discriminator updates)"
    return labelled_figure([samples(r, 64) for r in runs], labels, title, 8, scale=1.5)


def fashion_comparison(runs: list[Run]) -> Figure:
    (run,) = runs
    real = run.array("val_images.npy")
    real = real[np.sort(np.random.default_rng(SEED).choice(len(real), 32, replace=False))]
    title = f"Fashion-MNIST: real held-out images vs generated ones, FID {run.metrics['fid']:.3f}"
    return labelled_figure([real, samples(run, 32)], ["real held-out", "generated"], title, 4, scale=3)


def glyph_translation(runs: list[Run]) -> Figure:
    val_a, val_b = runs[0].array("val_A.npy"), runs[0].array("val_B.npy")
    pick = np.unique(np.linspace(0, len(val_a) - 1, 20).round().astype(int))  # spread over the scripts
    inputs = val_a[pick].astype(np.float32) / 127.5 - 1
    outputs = [r.model(layout.ONNX_TRANSLATORS["AB"]).translate(inputs) for r in runs]
    fonts = [Path(runs[0].params["data"]["glyphs"][k]).stem for k in ("font_a", "font_b")]
    scores = [r.label(more=f", L1 {r.metrics['l1']:.4f}" if "l1" in r.metrics else "") for r in runs]
    labels = [f"input ({fonts[0]})", *scores, f"target ({fonts[1]})"]
    title = f"{fonts[0]} → {fonts[1]} on held-out characters"
    return labelled_figure([inputs, *outputs, val_b[pick]], labels, title, len(pick), stacked=True, scale=1)


def digits10_augment(runs: list[Run]) -> Figure:
    def augmentation(a: dict) -> str:
        return "ADA" if a["ada"] else "DiffAugment" if a["diffaugment"] else "no augmentation"

    labels = [r.label(f" ({augmentation(r.params['augment'])})") for r in runs]
    title = f"{runs[0].params['train']['data_fraction']:.0%} of the digits, without and with augmentation"
    return labelled_figure([samples(r, 32) for r in runs], labels, title, 16, stacked=True, scale=2)


def stylegan2_digits(runs: list[Run]) -> Figure:
    """The same 16 seeds at three truncation values: psi pulls every w towards the average w."""
    (run,) = runs
    g = run.model(layout.ONNX_GENERATOR)
    psis = (1.0, 0.7, 0.5)
    rows = [g.generate(16, seed=SEED, truncation_psi=psi) for psi in psis]
    labels = [run.label(", ψ 1 (no truncation)"), *(f"ψ {psi:g}" for psi in psis[1:])]  # FID: untruncated
    title = "StyleGAN2 on the digits: the same z at three truncation values ψ"
    return labelled_figure(rows, labels, title, 16, stacked=True, scale=2)


# figure -> (the configurations it shows, in order; how it is drawn)
FIGURES: dict[str, tuple[list[str], Callable[[list[Run]], Figure]]] = {
    "digits_samples": ([DEFAULT], digits_samples),
    "configs": ([DEFAULT, "configs/conditional-digits.yaml", "configs/hinge-sn.yaml", "configs/wgan-gp.yaml"], configs),
    "fashion_comparison": (["configs/fashion-mnist.yaml"], fashion_comparison),
    "glyph_translation": (["configs/glyphs-pix2pix.yaml", "configs/glyphs-cyclegan.yaml"], glyph_translation),
    "digits10_augment": (
        ["configs/digits-10pct.yaml", "configs/digits-10pct-diffaugment.yaml", "configs/digits-10pct-ada.yaml"],
        digits10_augment,
    ),
    "stylegan2_digits": (["configs/stylegan2-digits.yaml"], stylegan2_digits),
}


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


class Experiments:
    """The configurations as DVC experiments of this repository, reused when still current."""

    def __init__(self, overlay: Path | None):
        self.extra = read_yaml(overlay, "give the overlay's path") if overlay else {}
        self.suffix = f"-{overlay.stem}" if overlay else ""
        self.base = read_yaml(ROOT / layout.PARAMS) or {}
        stages = (yaml.safe_load((ROOT / "dvc.yaml").read_text()) or {}).get("stages", {})
        self.code = sorted({"dvc.yaml", *(d for s in stages.values() for d in s.get("deps", []))})

    def name(self, config: str) -> str:
        return ("default" if config == DEFAULT else Path(config).stem) + self.suffix

    def overlay(self, config: str) -> dict:
        return merge_overlay({} if config == DEFAULT else read_yaml(ROOT / config) or {}, self.extra)

    def params(self, config: str) -> dict:
        return parse_params(merge_overlay(self.base, self.overlay(config)), config).model_dump(mode="json")

    def find(self, config: str) -> str | None:
        """The commit of a current experiment for `config`: its name, its params, the workspace's code."""
        from dvc.repo import Repo

        with Repo(str(ROOT)) as repo:
            found = [sha for exps in repo.experiments.ls(all_commits=True).values() for name, sha in exps
                     if name == self.name(config) and sha]  # fmt: skip
        for sha in found:
            try:
                params = parse_params(yaml.safe_load(git("show", f"{sha}:{layout.PARAMS}").stdout) or {})
            except UserError:  # params of an older schema
                continue
            if params.model_dump(mode="json") == self.params(config) and not git("diff", "--quiet", sha, "--",
                                                                                 *self.code).returncode:  # fmt: skip
                return sha
        return None

    def run(self, config: str) -> None:
        from dvc.repo import Repo

        with Repo(str(ROOT)) as repo:  # --force replaces an out-of-date experiment of that name on this commit
            taken = any(n == self.name(config) for exps in repo.experiments.ls().values() for n, _ in exps)
        sets = [x for kv in overrides(self.overlay(config)) for x in ("-S", kv)]
        cmd = ["exp", "run", "--temp", "--name", self.name(config), *(["--force"] if taken else []), *sets]
        print(f"{config}: dvc {' '.join(cmd)}", flush=True)
        if subprocess.run([sys.executable, "-m", "dvc", *cmd], cwd=ROOT, env=tool_env()).returncode:
            raise UserError(f"{config}: the experiment failed (DVC's message is above)")

    def load(self, configs: list[str], workdir: Path) -> dict[str, Run]:
        """Every configuration's Run, running the experiments that are missing or out of date."""
        for config in configs:
            self.params(config)  # a bad overlay stops everything before anything runs
        stale = [c for c in configs if self.find(c) is None]
        if stale:
            from flows.server import local_prefect_api

            with local_prefect_api():  # one Prefect server for every stage of every experiment
                for config in stale:
                    self.run(config)
        runs = {}
        for config in configs:
            if (sha := self.find(config)) is None:
                raise UserError(f"{config}: experiment {self.name(config)} ran but does not match the workspace")
            metrics = yaml.safe_load(git("show", f"{sha}:{layout.EVAL_METRICS}").stdout)
            print(f"{config}: experiment {self.name(config)} ({sha[:7]}), FID {metrics['fid']:.3f}")
            runs[config] = Run(config, sha, self.params(config), metrics, workdir)
        return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figures", nargs="*", help=f"all, or any of: {', '.join(FIGURES)}")
    parser.add_argument("--list", action="store_true", help="list the figures and the configurations each shows")
    parser.add_argument("--overlay", type=Path, help="params overlay laid over every configuration (trial runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files")
    args = parser.parse_args(argv)
    if args.list:
        for name, (configs, _) in FIGURES.items():
            print(f"{name}: {', '.join(configs)}")
        return 0
    if not args.figures or not set(args.figures) <= {"all", *FIGURES}:
        parser.error(f"name the figures to make: all, or any of {', '.join(FIGURES)}")
    names = list(FIGURES) if "all" in args.figures else list(dict.fromkeys(args.figures))
    try:
        experiments = Experiments(args.overlay)
        with tempfile.TemporaryDirectory() as workdir:
            runs = experiments.load(list(dict.fromkeys(c for n in names for c in FIGURES[n][0])), Path(workdir))
            for name in names:
                configs, draw = FIGURES[name]
                path = save_figure(draw([runs[c] for c in configs]), args.out / f"{name}.png")
                print(f"wrote {path}")
    except UserError as err:
        print(f"figures: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
