"""Sampling as StyleGAN users know it: `ganpipe generate --seeds 0-3 --outdir DIR` (one image per
seed, each the image `-n 1 --seed S` draws), `--class`, a picture format that follows the name,
and `ganpipe interpolate` (a walk between seeds' z as a strip and an animation), on real exported
ONNX generators."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_export import save_generator

from flows.cli import main
from pipeline.export import export_generator
from pipeline.grid import to_uint8
from pipeline.inference import OnnxGenerator
from pipeline.latents import slerp
from pipeline.sampling import render, seed_latents


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """A conditional DCGAN (classes a, b, c) exported by the pipeline's own export code."""
    root = tmp_path_factory.mktemp("sampling")
    export_generator(save_generator(root / "g.pt", conditional=True), root / "generator.onnx")
    return root / "generator.onnx"


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_one_image_per_seed_named_by_seed_each_the_image_of_its_seed(conditional, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--model", str(conditional), "--seeds", "0-2,7", "--class", "b", "--outdir", str(out),
                 "--scale", "1"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    model = OnnxGenerator(conditional)
    for seed in (0, 1, 2, 7):
        alone = to_uint8(model.generate(1, seed=seed, labels=["b"]))[0, 0]  # what -n 1 --seed S --class b draws
        assert np.array_equal(pixels(out / f"seed{seed:04d}.png"), alone)
    assert not np.array_equal(pixels(out / "seed0000.png"), pixels(out / "seed0001.png"))
    # in floats (an untrained model's classes differ by less than a grey level): a seed's image of class b
    # is generate's, to the bit, and another class's differs
    z = seed_latents(model, [7])
    assert np.array_equal(render(model, z, "b"), model.generate(1, seed=7, labels=["b"]))
    assert not np.array_equal(render(model, z, "b"), render(model, z, "c"))
    assert "wrote 4 samples to" in capsys.readouterr().out


def test_the_picture_format_follows_the_file_name_or_is_refused_before_any_work(conditional, tmp_path, capsys):
    for name, magic in (("g.jpg", b"\xff\xd8\xff"), ("g.webp", b"RIFF"), ("g.png", b"\x89PNG")):
        assert main(["generate", "--model", str(conditional), "-n", "4", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(magic), name
    assert main(["generate", "--model", str(conditional), "-n", "4", "--out", str(tmp_path / "g.bmp")]) == 2
    err = capsys.readouterr().err
    assert err == (f"ganpipe generate: error: --out: {tmp_path / 'g.bmp'}: write one of .jpeg, .jpg, .png, .webp "
                   "(the format follows the name)\n")  # fmt: skip
    assert not (tmp_path / "g.bmp").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "5-2"], "--seeds: 5-2 is not a range of seeds from 0 to 9223372036854775807"),
    (["--seeds", "0-x"], "--seeds: seeds and ranges such as 0-15 or 1,5,9, got '0-x'"),
    (["--seeds", "0-99999"], "--seeds: at most 10000 seeds, got more in '0-99999'"),
    (["--outdir", "d"], "--outdir writes one image per seed: give --seeds too, e.g. --seeds 0-15"),
    (["--seeds", "0-3", "-n", "4"], "-n and --seeds: give one (--seeds 0-15 draws the images of those 16 seeds)"),
    (["--seeds", "0-3", "--class", "a", "--class", "b"],
     "--label: with --seeds, one class for every seed (e.g. --class 3)"),
])  # fmt: skip
def test_bad_seed_options_are_one_line_and_write_nothing(conditional, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", str(conditional), *argv]) == 2
    assert capsys.readouterr().err == f"ganpipe generate: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_walk_between_seeds_passes_through_each_seeds_image_as_a_strip_and_animations(conditional, tmp_path):
    model = OnnxGenerator(conditional)
    strip, gif, webp = tmp_path / "walk.png", tmp_path / "walk.gif", tmp_path / "walk.webp"
    args = ["interpolate", "--model", str(conditional), "--seeds", "0,3,5", "--steps", "4", "--class", "a",
            "--scale", "1"]  # fmt: skip
    assert main([*args, "--out", str(strip), "--animation", str(webp)]) == 0
    assert main([*args, "--out", str(tmp_path / "again.png"), "--animation", str(gif)]) == 0
    assert Image.open(gif).n_frames == 9 and Image.open(webp).n_frames == 9  # 2 legs x 4 steps + the last seed
    frames = Image.open(webp)
    ends = {}
    for i in (0, 4, 8):
        frames.seek(i)
        ends[i] = np.asarray(frames.convert("L"))
    for i, seed in ((0, 0), (4, 3), (8, 5)):  # lossless WebP: exactly each seed's own image
        assert np.array_equal(ends[i], to_uint8(model.generate(1, seed=seed, labels=["a"]))[0, 0]), seed
    grid = pixels(strip)
    assert grid.shape == (2 * 18 + 2, 5 * 18 + 2)  # one leg per row: 5 images wide, 2 rows (16 px + border)


def test_slerp_keeps_to_the_great_circle_between_two_latents(conditional):
    a, b = seed_latents(OnnxGenerator(conditional), [0, 1])
    path = slerp(a, b, np.linspace(0, 1, 5))
    assert np.allclose(path[0], a, atol=1e-6) and np.allclose(path[-1], b, atol=1e-6)
    radius = np.linalg.norm(path, axis=1)  # between the two norms, never through the low-norm middle of a line
    assert radius.min() >= min(np.linalg.norm(a), np.linalg.norm(b)) * 0.999
    straight = np.linalg.norm((a + b) / 2)
    assert radius[2] > straight


def test_a_walk_needs_two_seeds_and_an_animation_format(conditional, tmp_path, capsys):
    base = ["interpolate", "--model", str(conditional), "--out", str(tmp_path / "w.png")]
    assert main([*base, "--seeds", "4"]) == 2
    assert capsys.readouterr().err == "ganpipe interpolate: error: --seeds: a walk needs two seeds or more, e.g. 0,7 " \
                                      "or 0-3\n"  # fmt: skip
    assert main([*base, "--seeds", "0,1", "--animation", str(tmp_path / "a.png")]) == 2
    assert capsys.readouterr().err == (f"ganpipe interpolate: error: --animation: {tmp_path / 'a.png'}: write one "
                                       "of .gif, .webp (the format follows the name)\n")  # fmt: skip
    assert list(tmp_path.iterdir()) == []
