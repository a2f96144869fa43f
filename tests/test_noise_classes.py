"""Choosing the class of a model trained with classes drawn from its noise (model.classes_from_noise):
it takes z alone, and the class of a sample is the argmax of z's first K entries. The export says K
(ganpipe.noise_classes); the library, `ganpipe generate --class`, /v1 and the page turn a class asked
for into latents of that class."""

from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from test_serve import running
from test_serve_page import browser, set_field, shown_png, wait_for_output  # noqa: F401 (browser: a fixture)

from pipeline.config import ModelConfig
from pipeline.export import export_generator
from pipeline.grid import to_uint8
from pipeline.inference import ModelError, OnnxGenerator
from pipeline.models import ClassesFromNoise, build_generator
from pipeline.noise_classes import with_classes
from pipeline.sampling import render
from pipeline.serve.app import ServeConfig

K = 3


@pytest.fixture(scope="module")
def noise_model(tmp_path_factory):
    """A dcgan trained (here: initialised) with classes from the noise, saved as training saves it and
    exported: its inner G is class-conditional, the exported graph takes z alone."""
    root = tmp_path_factory.mktemp("noise-classes")
    cfg = ModelConfig(arch="dcgan", latent_dim=8, g_channels=8, classes_from_noise=True)
    torch.manual_seed(0)
    g = build_generator(cfg, 16, 1, K)
    assert isinstance(g, ClassesFromNoise)
    spec = {"model": cfg.model_dump(mode="json"), "image_size": 16, "channels": 1, "num_classes": 0,
            "class_names": [], "noise_classes": K}  # fmt: skip
    torch.save({"spec": spec, "state_dict": g.eval().state_dict(), "steps": 0}, root / "g.pt")
    onnx_path = root / "generator.onnx"
    export_generator(root / "g.pt", onnx_path, card_path=root / "card.json")
    return onnx_path, g


def test_with_classes_moves_the_largest_entry_to_the_class_asked_for():
    z = np.random.default_rng(0).standard_normal((500, 8), dtype=np.float32)
    classes = np.arange(500) % K
    moved = with_classes(z, classes, K)
    assert (moved[:, :K].argmax(1) == classes).all()
    assert np.array_equal(np.sort(moved, 1), np.sort(z, 1))  # the same entries, two of them swapped
    assert np.array_equal(moved[:, K:], z[:, K:]) and (moved != z).any(1).mean() == pytest.approx(2 / 3, abs=0.07)
    assert np.array_equal(z, np.random.default_rng(0).standard_normal((500, 8), dtype=np.float32))  # not in place


def test_the_export_says_how_many_classes_come_from_the_noise(noise_model):
    onnx_path, _ = noise_model
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert meta["ganpipe.noise_classes"] == "3" and meta["ganpipe.num_classes"] == "0"
    model = OnnxGenerator(onnx_path)
    assert [i.name for i in model.session.get_inputs()] == ["z"]
    assert (model.info.classes, model.info.noise_classes) == (3, 3)
    card = (onnx_path.parent / "card.json").read_text()
    assert "argmax of z's first 3 entries" in card


def test_a_class_asked_for_reaches_the_inner_conditional_generator(noise_model):
    onnx_path, g = noise_model
    model = OnnxGenerator(onnx_path)
    z = np.random.default_rng(5).standard_normal((4, 8), dtype=np.float32)
    for c in range(K):
        images = model.generate(4, seed=5, labels=[c])
        zc = torch.from_numpy(with_classes(z, np.full(4, c), K))
        with torch.no_grad():
            expected = g.inner(zc, torch.full((4,), c)).numpy()
        np.testing.assert_allclose(images, expected, atol=1e-4)
        np.testing.assert_allclose(render(model, z, str(c)), expected, atol=1e-4)
    # no class asked for: the latents are the seed's own, as before
    np.testing.assert_allclose(model.generate(4, seed=5), model.session.run(["images"], {"z": z})[0], atol=0)
    with pytest.raises(ModelError, match="out of range; this model's classes are indices 0-2"):
        model.generate(1, labels=[3])


def test_metadata_that_does_not_fit_is_refused(noise_model, tmp_path):
    onnx_path, _ = noise_model
    proto = onnx.load(onnx_path)
    for p in proto.metadata_props:
        if p.key == "ganpipe.noise_classes":
            p.value = "9"  # more than latent_dim 8
    onnx.save(proto, tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match=r"ganpipe\.noise_classes is 9"):
        OnnxGenerator(tmp_path / "bad.onnx")


def test_generate_class_on_the_command_line(noise_model, tmp_path):
    onnx_path, _ = noise_model
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "flows.cli", "generate", "--model", str(onnx_path), "--seeds", "4,5",
                          "--class", "2", "--outdir", str(out), "--scale", "1"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    model = OnnxGenerator(onnx_path)
    for seed in (4, 5):
        want = to_uint8(model.generate(1, seed=seed, labels=[2]))[0, 0]
        assert np.array_equal(np.asarray(Image.open(out / f"seed{seed:04d}.png")), want)


def test_v1_and_the_page_offer_the_classes(noise_model, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    onnx_path, _ = noise_model
    with running(ServeConfig(model=onnx_path)) as url:
        meta = httpx.get(f"{url}/v1/model").json()
        assert (meta["classes"], meta["noise_classes"], meta["num_classes"]) == (3, 3, 0)
        res = httpx.post(f"{url}/v1/generate", json={"n": 2, "seed": 7, "labels": ["1"], "format": "npy"})
        assert res.status_code == 200, res.text
        want = OnnxGenerator(onnx_path).generate(2, seed=7, labels=[1])
        np.testing.assert_array_equal(np.load(io.BytesIO(res.content)), want)
        assert httpx.post(f"{url}/v1/generate", json={"n": 1, "labels": ["3"]}).status_code == 400

        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "generate").get_attribute("class"))
        options = [o.text for o in Select(browser.find_element(By.ID, "class")).options]
        assert options == ["any (drawn from the noise)", "0", "1", "2", "all classes (a row each)"]
        wait_for_output(browser)  # the grid on load: no class asked for, each from its noise
        on_load = httpx.post(f"{url}/v1/generate", json={"n": 16, "seed": 0}).content
        assert shown_png(browser) == on_load
        Select(browser.find_element(By.ID, "class")).select_by_visible_text("2")
        set_field(browser, "seed", "3")
        browser.find_element(By.ID, "go").click()
        expected = httpx.post(f"{url}/v1/generate", json={"n": 16, "seed": 3, "labels": ["2"]}).content
        WebDriverWait(browser, 30).until(lambda d: wait_for_output(d) and shown_png(d) == expected)


def test_oip_takes_labels_for_a_model_whose_classes_come_from_the_noise(noise_model):
    """The graph takes only z; the Open Inference Protocol endpoint takes `labels` [N] as for a conditional
    model and feeds z of those classes, so KServe/Triton clients ask for a class the same way."""
    onnx_path, _ = noise_model
    model = OnnxGenerator(onnx_path)
    z = np.random.default_rng(0).standard_normal((4, model.info.latent_dim)).astype(np.float32)
    labels = [2, 0, 1, 2]
    with running(ServeConfig(model=onnx_path, model_name="g")) as url:
        meta = httpx.get(f"{url}/v2/models/g").json()
        assert {"name": "labels", "datatype": "INT64", "shape": [-1]} in meta["inputs"]

        def infer(*inputs: dict) -> httpx.Response:
            return httpx.post(f"{url}/v2/models/g/infer", json={"inputs": list(inputs)})

        zin = {"name": "z", "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()}
        res = infer(zin, {"name": "labels", "shape": [4], "datatype": "INT64", "data": labels})
        assert res.status_code == 200, res.text
        want = model.session.run(["images"], {"z": with_classes(z, np.array(labels), 3)})[0]
        images = np.asarray(res.json()["outputs"][0]["data"], np.float32).reshape(want.shape)
        np.testing.assert_allclose(images, want, atol=1e-6)
        plain = infer(zin).json()["outputs"][0]["data"]  # no labels: z as sent, each sample of its own class
        np.testing.assert_allclose(np.asarray(plain, np.float32).reshape(want.shape),
                                   model.session.run(["images"], {"z": z})[0], atol=1e-6)  # fmt: skip
        bad = infer(zin, {"name": "labels", "shape": [4], "datatype": "INT64", "data": [0, 1, 3, 0]})
        assert bad.status_code == 400 and "class indices are 0-2" in bad.json()["error"]
        short = infer(zin, {"name": "labels", "shape": [3], "datatype": "INT64", "data": [0, 1, 2]})
        assert short.status_code == 400 and "labels" in short.json()["error"]
