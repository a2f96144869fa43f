"""Pictures carry their titles and labels: the evaluate stage's comparisons, and the docs'
figures, which docs/figures.py makes from DVC experiments (end to end, with tiny params)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, make_repo, merge, sh, write_params
from PIL import Image

from pipeline import layout
from pipeline.grid import figure_png, make_grid
from pipeline.metrics.suite import comparison_figure
from pipeline.metrics.translation import translation_figure

# over every configuration: seconds per run, glyphs of ASCII only, CycleGAN with two blocks
QUICK = merge(TINY, {"data": {"glyphs": {"chars": ["ascii"]}}, "model": {"n_blocks": 2}})
AUGMENT = ["configs/digits-10pct.yaml", "configs/digits-10pct-diffaugment.yaml", "configs/digits-10pct-ada.yaml"]
GLYPHS = ["configs/glyphs-pix2pix.yaml", "configs/glyphs-cyclegan.yaml"]


def test_eval_comparison_shows_real_beside_generated_with_the_numbers():
    real, fake = np.full((8, 1, 4, 4), -1.0, np.float32), np.full((8, 1, 4, 4), 1.0, np.float32)
    m = {"fid": 2.7704, "fid_vs_floor": 5.94, "precision": 0.671, "recall": 0.984, "confidence": 0.8269,
         "fid_real_floor": 0.4662, "precision_real_floor": 0.9714, "recall_real_floor": 0.961,
         "confidence_real_floor": 0.9755}  # fmt: skip
    fig = comparison_figure(real, fake, m)
    assert fig._suptitle.get_text() == "real held-out vs generated: FID 5.94x the real-data floor"
    assert [ax.get_title() for ax in fig.axes] == [
        "real held-out\nFID 0.466, confidence 0.976\nprecision 0.97, recall 0.96",
        "generated\nFID 2.770, confidence 0.827\nprecision 0.67, recall 0.98",
    ]
    for ax, images in zip(fig.axes, (real, fake), strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), make_grid(images, 4)[..., 0])
    no_classes = comparison_figure(real, fake, {k: v for k, v in m.items() if not k.startswith("confidence")})
    assert "confidence" not in no_classes.axes[1].get_title()  # an evaluator without classes has none


def test_translation_comparison_labels_input_output_and_target_columns():
    a, out, b = (np.full((3, 1, 8, 8), v, np.float32) for v in (-1.0, 0.0, 1.0))
    fig = translation_figure([a, out, b], {"fid": 0.3071, "l1": 0.03384})
    assert [ax.get_title() for ax in fig.axes] == ["input", "output", "target"]
    assert fig._suptitle.get_text() == "held-out A→B translations, FID 0.307, L1 0.0338"
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), make_grid(out, 1)[..., 0])
    unpaired = translation_figure([a, out], {"fid": 1.0})  # no ground truth: no target, no L1
    assert [ax.get_title() for ax in unpaired.axes] == ["input", "output"] and "L1" not in unpaired._suptitle.get_text()


def test_the_script_lists_its_figures_and_refuses_unknown_ones():
    listed = sh([sys.executable, "docs/figures.py", "--list"], REPO).stdout
    assert "digits10_augment: " + ", ".join(AUGMENT) in listed
    assert "glyph_translation: " + ", ".join(GLYPHS) in listed
    bad = sh([sys.executable, "docs/figures.py", "digits_sample"], REPO, check=False)
    assert bad.returncode == 2 and "name the figures to make: all, or any of digits_samples, configs" in bad.stderr


def load_script(root: Path):
    spec = importlib.util.spec_from_file_location("figures", root / "docs" / "figures.py")
    module = sys.modules["figures"] = importlib.util.module_from_spec(spec)  # where its dataclass looks
    spec.loader.exec_module(module)
    return module


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.fixture(scope="module")
def made(tmp_path_factory, prefect_api):
    """A figure made by the script in a fresh copy of the project with the shipped params, the
    tiny overlay laid over its three configurations (three DVC experiments)."""
    root = make_repo(tmp_path_factory.mktemp("figures"), {})
    overlay = write_params(tmp_path_factory.mktemp("overlay") / "quick.yaml", QUICK)
    res = sh([sys.executable, "docs/figures.py", "digits10_augment", "--overlay", str(overlay), "--out", "out"], root)
    return root, overlay, res.stdout


@pytest.fixture(scope="module")
def runs(made, tmp_path_factory):
    root, overlay, _ = made
    figures = load_script(root)
    return figures, figures.Experiments(overlay).load(AUGMENT, tmp_path_factory.mktemp("models"))


def local_run(figures, config: str, params: dict, metrics: dict, files: dict[str, Path], workdir: Path):
    """A figures.Run over files on disk instead of an experiment's commit: `files` maps a
    folder of the project (data/prepared, exports) to where its files are."""

    class LocalRun(figures.Run):
        def read(self, path: Path | str) -> bytes:
            folder, name = str(Path(path).parent), Path(path).name
            return (files[folder] / name).read_bytes()

    return LocalRun(config, "local", params, metrics, workdir)


def exp_fids(root: Path) -> dict[str, float]:
    """Each experiment's FID as `dvc exp show` reports it."""
    rows = json.loads(sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root).stdout)
    exps = [exp for row in rows for exp in row.get("experiments") or []]
    return {exp["name"]: exp["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]["fid"] for exp in exps}


@pytest.mark.integration
def test_the_augmentation_figure_has_a_row_per_configuration_ada_included(made, runs):
    root, _, stdout = made
    figures, found = runs
    assert stdout.count("dvc exp run --temp --name") == 3 and "wrote out/digits10_augment.png" in stdout
    fig = figures.digits10_augment([found[c] for c in AUGMENT])
    fid, names = exp_fids(root), [Path(c).stem for c in AUGMENT]
    rows = [f"{n} ({kind})\nFID {fid[n + '-quick']:.3f}" for n, kind in zip(names, ["no augmentation", "DiffAugment",
                                                                                   "ADA"], strict=True)]  # fmt: skip
    assert [ax.get_ylabel() for ax in fig.axes] == rows
    assert fig._suptitle.get_text() == "10% of the digits, without and with augmentation"
    # the PNG written is this figure: the samples of the three exported models, from the same seed
    np.testing.assert_array_equal(pixels((root / "out/digits10_augment.png").read_bytes()), pixels(figure_png(fig)))


def test_the_glyph_figure_has_input_both_translators_and_target_rows(tmp_path_factory):
    from test_translate import export_trained, glyph_data, translate_params

    from pipeline.config import parse_params

    prepared = glyph_data(tmp_path_factory)
    figures, found = load_script(REPO), []
    for config, arch, scores in zip(GLYPHS, ["pix2pix", "cyclegan"], [(1.5, 0.05), (2.25, 0.0625)], strict=True):
        root, _ = export_trained(tmp_path_factory, prepared, arch)
        params = parse_params(translate_params(arch)).model_dump(mode="json")
        files = {"data/prepared": prepared, "exports": root / "exports"}
        found.append(local_run(figures, config, params, dict(zip(["fid", "l1"], scores, strict=True)), files,
                               tmp_path_factory.mktemp("work")))  # fmt: skip
    fig = figures.glyph_translation(found)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["input (DejaVuSans)", "glyphs-pix2pix\nFID 1.500, L1 0.0500",
                      "glyphs-cyclegan\nFID 2.250, L1 0.0625", "target (DejaVuSerif)"]  # fmt: skip
    # the rows: held-out inputs, each translator's output of them, their targets
    val_a, val_b = (np.load(prepared / f"val_{d}.npy") for d in "AB")
    pick = np.unique(np.linspace(0, len(val_a) - 1, 20).round().astype(int))
    inputs = val_a[pick].astype(np.float32) / 127.5 - 1
    rows = [inputs, *(r.model(layout.ONNX_TRANSLATORS["AB"]).translate(inputs) for r in found), val_b[pick]]
    for ax, row in zip(fig.axes, rows, strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), make_grid(row, len(pick))[..., 0])


@pytest.mark.integration
def test_the_other_figures_draw_their_panels_from_runs(runs):
    figures, found = runs
    plain, diffaugment, ada = (found[c] for c in AUGMENT)
    side = figures.configs([plain, diffaugment, ada])
    assert [ax.get_title() for ax in side.axes] == [r.label() for r in (plain, diffaugment, ada)]
    assert len(figures.digits_samples([ada]).axes[0].images) == 1
    fashion = figures.fashion_comparison([plain])
    assert [ax.get_title() for ax in fashion.axes] == ["real held-out", "generated"]
    real = fashion.axes[0].images[0].get_array()
    assert real.shape == make_grid(np.zeros((32, 1, 16, 16), np.uint8), 4)[..., 0].shape


@pytest.mark.integration
def test_a_second_run_reuses_the_experiments_until_params_or_code_change(made, runs, tmp_path):
    root, overlay, _ = made
    figures, _ = runs
    before = (root / "out/digits10_augment.png").read_bytes()
    again = sh([sys.executable, "docs/figures.py", "digits10_augment", "--overlay", str(overlay), "--out", "out"], root)
    assert "dvc exp run" not in again.stdout and "experiment digits-10pct-ada-quick (" in again.stdout
    assert (root / "out/digits10_augment.png").read_bytes() == before
    experiments = figures.Experiments(overlay)
    assert experiments.find(AUGMENT[2]) is not None
    longer = write_params(tmp_path / "quick.yaml", merge(QUICK, {"train": {"steps": 18}}))  # the same names
    assert figures.Experiments(longer).find(AUGMENT[2]) is None
    code = root / "pipeline" / "losses.py"
    source = code.read_text()
    try:
        code.write_text(source + "\n# changed\n")
        assert experiments.find(AUGMENT[2]) is None  # a dependency of the stages changed
    finally:
        code.write_text(source)
    assert experiments.find(AUGMENT[2]) is not None
    assert not (root / "models" / "generator.pt").exists()  # every run was in a temporary copy, none in the workspace
