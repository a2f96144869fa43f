"""Style transfer end to end on tiny models: training (and exact resume), the metrics
against the identity baseline, ONNX export with parity at two spatial sizes, and
`ganpipe translate` on a folder with a bad file in it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, merge
from PIL import Image

from flows.cli import main as ganpipe
from pipeline.config import parse_params
from pipeline.data.prepare import prepare
from pipeline.training.runner import TrainPaths, train

GLYPHS = {"source": "glyphs", "image_size": 16, "glyphs": {"chars": ["ascii"]}}


def translate_params(arch: str, **train) -> dict:
    over = {
        "task": "translate",
        "data": GLYPHS,
        "model": {"arch": arch, "g_channels": 8, "d_channels": 8, "n_blocks": 2},
        "train": {"steps": 6, "batch_size": 4, "sample_every": 3, "log_every": 2, "checkpoint_every": 3,
                  "loss": "lsgan", "pool_size": 4, "lr_decay_start": 0.5, **train},
    }  # fmt: skip
    return merge(TINY, over)


def glyph_data(tmp_path_factory) -> Path:
    """The tiny glyph pair prepared at 16x16 (A: sans, B: serif)."""
    root = tmp_path_factory.mktemp("glyphs16")
    params = parse_params(translate_params("pix2pix"))
    prepare(params.data, root / "prepared", root / "report.json")
    return root / "prepared"


@pytest.fixture(scope="module")
def glyphs16(tmp_path_factory):
    return glyph_data(tmp_path_factory)


def paths_in(tmp_path, prepared) -> TrainPaths:
    return TrainPaths(
        prepared=prepared,
        checkpoints=tmp_path / "ckpt",
        generator=tmp_path / "generator.pt",
        live_dir=tmp_path / "dvclive",
        samples=tmp_path / "samples.png",
    )


def test_jitter_crops_both_images_of_a_pair_at_the_same_random_place(glyphs16):
    from pipeline.training.distributed import World
    from pipeline.training.objectives import make_objective

    params = parse_params(merge(translate_params("pix2pix"), {"augment": {"jitter": 4}}))
    obj = make_objective(params, glyphs16, torch.device("cpu"), torch.float32, World())
    x = torch.rand(8, 1, 16, 16)
    a, b = obj.jitter(x, x.clone())
    assert a.shape == x.shape and torch.equal(a, b)  # one window for both images of a pair
    big = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    places = [(dy, dx) for dy in range(5) for dx in range(5)]
    windows = [next(p for p in places if torch.equal(a[i], big[i, :, p[0] : p[0] + 16, p[1] : p[1] + 16]))
               for i in range(8)]  # fmt: skip
    assert len(set(windows)) > 1  # a random place per row
    obj.jitter_pixels = 0
    assert obj.jitter(x)[0] is x  # off: untouched


@pytest.mark.parametrize("arch", ["cyclegan", "pix2pix"])
def test_translation_training_resumes_exactly(tmp_path, glyphs16, arch):
    from pipeline.models.artifact import load_translators

    # constant lrs: a 3-step run continued to 6 is then the same run as 6 steps in one go; with jitter,
    # whose random stream the checkpoint carries too
    jitter = {"augment": {"jitter": 2}}
    once = parse_params(merge(translate_params(arch, lr_decay_start=1.0), jitter))
    train(once, paths_in(tmp_path / "once", glyphs16), progress=False)
    half = parse_params(merge(translate_params(arch, steps=3, lr_decay_start=1.0), jitter))
    paths = paths_in(tmp_path / "twice", glyphs16)
    train(half, paths, progress=False)
    result = train(once, paths, progress=False)
    assert result.resumed_from == 3
    a, spec = load_translators(tmp_path / "once" / "generator.pt")
    b, _ = load_translators(paths.generator)
    assert sorted(a) == (["AB", "BA"] if arch == "cyclegan" else ["AB"]) == spec["directions"]
    for d in a:
        for (name, p), q in zip(a[d].state_dict().items(), b[d].state_dict().values(), strict=True):
            assert torch.equal(p, q), f"{d}.{name} differs after resume"
    assert (paths.samples).stat().st_size > 0
    curves = (paths.live_dir / "plots" / "metrics" / "train").glob("*.tsv")
    names = {c.name for c in curves}
    assert {"loss_G.tsv", "loss_D.tsv"} <= names and "lr_G.tsv" not in names  # constant learning rates: no flat plot


def test_a_run_of_another_length_does_not_resume_when_the_learning_rates_decay_over_it(tmp_path, glyphs16):
    from pipeline.models.artifact import load_translators

    paths = paths_in(tmp_path / "twice", glyphs16)
    train(parse_params(translate_params("pix2pix", steps=3)), paths, progress=False)
    # the 3-step run decayed its rates over 3 steps; a 6-step run decays them over 6
    assert train(parse_params(translate_params("pix2pix")), paths, progress=False).resumed_from == 0
    fresh = paths_in(tmp_path / "fresh", glyphs16)
    train(parse_params(translate_params("pix2pix")), fresh, progress=False)
    a, _ = load_translators(paths.generator)
    b, _ = load_translators(fresh.generator)
    for (name, p), q in zip(a["AB"].state_dict().items(), b["AB"].state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # decaying learning rates are a curve worth plotting: logged, falling
    lr = (fresh.live_dir / "plots" / "metrics" / "train" / "lr_G.tsv").read_text().split("\n")[1:]
    values = [float(row.split("\t")[-1]) for row in lr if row]
    assert values and values == sorted(values, reverse=True) and values[-1] < values[0]


def test_learning_rate_decays_linearly_to_zero():
    from pipeline.training.objectives.translation import linear_decay

    f = linear_decay(100, 0.5)
    assert [f(0), f(49), f(50), f(75), f(100)] == [1.0, 1.0, 1.0, 0.5, 0.0]


def test_metrics_compare_with_the_identity_baseline(tmp_path, glyphs16):
    """The translation metrics stand beside the untranslated-input baseline, and the paired
    scores are right on inputs with known answers."""
    from pipeline.dataset import load_split
    from pipeline.metrics.evaluator import train_evaluator
    from pipeline.metrics.translation import evaluate_translation, paired_scores

    params = parse_params(translate_params("pix2pix"))
    paths = paths_in(tmp_path, glyphs16)
    train(params, paths, progress=False)
    blob = torch.load(paths.generator, weights_only=True)
    train_evaluator(params.evaluate.evaluator, load_split(glyphs16, "train", "B"), load_split(glyphs16, "val", "B"),
                    tmp_path / "evaluator.pt", seed=0, progress=False)  # fmt: skip
    m = evaluate_translation(params, paths.generator, tmp_path / "evaluator.pt", glyphs16, tmp_path / "grid.png")
    assert m["l1_identity_baseline"] > 0 and m["psnr_identity_baseline"] > 0
    assert m["l1_gain"] == pytest.approx(1 - m["l1"] / m["l1_identity_baseline"], rel=1e-3)  # rounded values
    assert Image.open(tmp_path / "grid.png").size[0] > 3 * 16  # input | output | target

    x = torch.rand(4, 1, 16, 16) * 2 - 1
    same = paired_scores(x, x)
    assert same["l1"] == 0 and same["ssim"] == pytest.approx(1.0) and same["psnr"] == 100.0
    shifted = paired_scores(x, (x + 0.5).clamp(-1, 1))
    assert 0 < shifted["l1"] <= 0.5 and shifted["ssim"] < 1
    assert blob["spec"]["task"] == "translate"


def export_trained(tmp_path_factory, glyphs16, arch: str, **model):
    from pipeline.export import export_translators

    root = tmp_path_factory.mktemp(f"{arch}-export")
    params = parse_params(merge(translate_params(arch), {"model": model}))
    train(params, paths_in(root, glyphs16), progress=False)
    metrics = export_translators(root / "generator.pt", root / "exports", card_path=root / "exports" / "card.json")
    return root, metrics


@pytest.fixture(scope="module")
def exported_cyclegan(tmp_path_factory, glyphs16):
    return export_trained(tmp_path_factory, glyphs16, "cyclegan")


def test_pix2pix_export_is_dynamic_in_size_down_to_its_training_size(tmp_path_factory, glyphs16):
    from pipeline.inference import OnnxTranslator

    root, metrics = export_trained(tmp_path_factory, glyphs16, "pix2pix")
    assert metrics["parity_passed"] and set(metrics["directions"]) == {"AB"}
    assert {"batch_1_16px", "batch_3_32px"} <= set(metrics["directions"]["AB"]["max_abs_diff_per_input"])
    model = OnnxTranslator(root / "exports" / "generator_AB.onnx")
    assert model.size_multiple == 16 and not (root / "exports" / "generator_BA.onnx").exists()
    assert model.translate(np.zeros((1, 1, 16, 48), dtype=np.float32)).shape == (1, 1, 16, 48)


def test_pix2pix_with_the_resnet_translator_trains_exports_and_takes_multiples_of_four(tmp_path_factory, glyphs16):
    """model.translator: resnet gives pix2pix CycleGAN's generator: two stride-2 levels, so the
    export takes any multiple of 4 from 8 px (the U-Net's takes multiples of its training size)."""
    from pipeline.inference import OnnxTranslator
    from pipeline.models.artifact import load_translators
    from pipeline.models.translation import ResnetGenerator

    root, metrics = export_trained(tmp_path_factory, glyphs16, "pix2pix", translator="resnet")
    gens, spec = load_translators(root / "generator.pt")
    assert spec["model"]["translator"] == "resnet" and isinstance(gens["AB"], ResnetGenerator)
    assert len(gens["AB"].net) > 10 and spec["size_multiple"] == 4 and spec["min_size"] == 8
    assert metrics["parity_passed"] and set(metrics["directions"]) == {"AB"}
    model = OnnxTranslator(root / "exports" / "generator_AB.onnx")
    assert (model.size_multiple, model.min_size) == (4, 8)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 12, 20)).astype(np.float32)
    with torch.no_grad():
        expected = gens["AB"](torch.from_numpy(x)).numpy()
    assert np.abs(model.translate(x) - expected).max() <= 1e-4


def test_export_matches_pytorch_at_two_spatial_sizes(exported_cyclegan):
    import onnx

    root, metrics = exported_cyclegan
    assert metrics["parity_passed"] and metrics["max_abs_diff"] <= 1e-4
    for d in ("AB", "BA"):
        diffs = metrics["directions"][d]["max_abs_diff_per_input"]
        assert set(diffs) == {"batch_1_16px", "batch_3_16px", "batch_1_32px", "batch_3_32px"}
        model = onnx.load(root / "exports" / f"generator_{d}.onnx")
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["ganpipe.task"] == "translate" and meta["ganpipe.direction"] == d
        assert meta["ganpipe.size_multiple"] == "4"
        assert [i.name for i in model.graph.input] == ["images"]
        assert [o.name for o in model.graph.output] == ["translated"]
    card = json.loads((root / "exports" / "card.json").read_text())
    assert card["files"] == {"AB": "generator_AB.onnx", "BA": "generator_BA.onnx"}


def test_translator_runs_on_non_square_inputs_and_refuses_bad_sizes(exported_cyclegan):
    from pipeline.inference import ModelError, OnnxTranslator

    root, _ = exported_cyclegan
    model = OnnxTranslator(root / "exports" / "generator_AB.onnx")
    out = model.translate(np.zeros((2, 1, 20, 36), dtype=np.float32))
    assert out.shape == (2, 1, 20, 36) and np.abs(out).max() <= 1
    with pytest.raises(ModelError, match="multiples of 4"):
        model.translate(np.zeros((1, 1, 18, 16), dtype=np.float32))
    img = model.translate_image(Image.new("RGB", (30, 22), (200, 10, 10)))
    assert img.size == (30, 22) and img.mode == "L"  # any size in, same size out
    assert model.min_size == 8 and model.translate_image(Image.new("L", (3, 5))).size == (3, 5)
    with pytest.raises(ModelError, match="at least 8"):
        model.translate(np.zeros((1, 1, 4, 8), dtype=np.float32))


def test_cli_translates_a_folder_mirroring_names_and_skips_a_bad_file(tmp_path, exported_cyclegan, capsys):
    root, _ = exported_cyclegan
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.new("L", (16, 16), 0).save(src / "a.png")
    Image.new("L", (24, 16), 255).save(src / "sub" / "b.jpg")
    (src / "notes.png").write_text("not an image")
    rc = ganpipe(["translate", "--model", str(root / "exports" / "generator_AB.onnx"), str(src), str(tmp_path / "out")])
    assert rc == 1  # some files were skipped: scripts notice
    assert Image.open(tmp_path / "out" / "a.png").size == (16, 16)
    assert Image.open(tmp_path / "out" / "sub" / "b.jpg").size == (24, 16)
    assert not (tmp_path / "out" / "notes.png").exists()
    captured = capsys.readouterr()
    assert "notes.png: not a PNG" in captured.err and "translated 2 of 3" in captured.out
    one = tmp_path / "one.png"
    assert ganpipe(["translate", "--model", str(root / "exports" / "generator_AB.onnx"), str(src / "a.png"),
                    str(one)]) == 0  # fmt: skip
    assert Image.open(one).size == (16, 16)


def test_missing_model_or_input_is_a_clear_error(tmp_path, exported_cyclegan, capsys):
    root, _ = exported_cyclegan
    assert ganpipe(["translate", "--model", str(tmp_path / "missing.onnx"), str(root), str(tmp_path / "o")]) == 2
    assert "missing.onnx: ONNX model not found" in capsys.readouterr().err
    model = str(root / "exports" / "generator_AB.onnx")
    assert ganpipe(["translate", "--model", model, str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "nothing: input not found" in capsys.readouterr().err


def test_translate_params_are_checked_together():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"task translate needs model\.arch cyclegan or pix2pix"):
        parse_params({"task": "translate", "data": GLYPHS})
    with pytest.raises(ConfigError, match="pix2pix learns from pairs"):
        parse_params({"task": "translate", "data": {"source": "folder", "path": "x", "layout": "unpaired"},
                      "model": {"arch": "pix2pix"}})  # fmt: skip
    with pytest.raises(ConfigError, match="is a translation model: set task: translate"):
        parse_params({"model": {"arch": "cyclegan"}})
    with pytest.raises(ConfigError, match=r"model\.unet_levels shapes the U-Net translator, .* is 'resnet'"):
        parse_params({"task": "translate", "data": GLYPHS, "model": {"arch": "pix2pix", "translator": "resnet",
                                                                     "unet_levels": 3}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"model\.translator chooses a style-transfer network"):
        parse_params({"model": {"translator": "unet"}})
    with pytest.raises(ConfigError, match="task translate trains in one process"):
        parse_params({"task": "translate", "data": GLYPHS, "model": {"arch": "cyclegan"},
                      "train": {"nproc_per_node": 2}})  # fmt: skip
