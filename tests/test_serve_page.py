"""The try-it page in a real browser: Debian's headless Chromium driven by Selenium
(chromium and chromium-driver: `make test` installs them when missing). Screenshots are kept in
tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_serve import grew, models, request_counts, running  # noqa: F401 (the models fixture is used by name)
from test_truncation import psi_model  # noqa: F401 (a fixture: a stylegan2 generator, which takes truncation_psi)

from pipeline.serve.app import ServeConfig

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, "Debian's chromium and chromium-driver are needed (`make test` installs them)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1000,900"):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for_output(driver) -> int:
    """Wait until the result image has loaded; return its natural width (read in the same step)."""
    loaded = "const i = document.getElementById('output'); return i && i.complete ? i.naturalWidth : 0"
    return WebDriverWait(driver, 30).until(lambda d: d.execute_script(loaded))


def severe_console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_generates_a_grid_for_a_chosen_class_and_seed(browser, models):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    with running(ServeConfig(model=models["generate"])) as url:
        before = request_counts(url)
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "generate").get_attribute("class"))
        assert "conditional.onnx" in browser.find_element(By.ID, "meta").text
        options = [o.text for o in Select(browser.find_element(By.ID, "class")).options]
        assert options == ["cat", "dog", "owl", "all classes (a row each)"]
        assert "hidden" in browser.find_element(By.ID, "psi-label").get_attribute("class")  # a dcgan: no truncation
        wait_for_output(browser)  # the grid the page shows as it loads
        Select(browser.find_element(By.ID, "class")).select_by_visible_text("owl")
        seed = browser.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("3")
        browser.find_element(By.ID, "go").click()
        assert wait_for_output(browser) > 16
        assert browser.find_element(By.ID, "caption").text.endswith("seed 3")
        browser.save_screenshot(str(ARTIFACTS / "serve_page_generate.png"))
        assert browser.find_element(By.ID, "error").text == ""
        assert severe_console_errors(browser) == []
        made = {k: v for k, v in grew(before, request_counts(url)).items() if k[1] != "latency observations"}
        # one grid on load, one asked for
        assert made == {("/", "200"): 1, ("/v1/model", "200"): 1, ("/v1/generate", "200"): 2, ("/metrics", "200"): 1}


def test_page_uploads_an_image_to_translate(browser, models, tmp_path):  # noqa: F811
    from PIL import Image

    picture = tmp_path / "glyph.png"
    Image.new("L", (40, 24), 200).save(picture)
    with running(ServeConfig(model=models["translate"])) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "translate").get_attribute("class"))
        assert "hidden" in browser.find_element(By.ID, "generate").get_attribute("class")
        assert not browser.find_element(By.ID, "download").is_displayed()  # no button before there is an image
        browser.find_element(By.ID, "file").send_keys(str(picture))
        browser.find_element(By.ID, "go-translate").click()
        assert wait_for_output(browser) == 40  # the translation comes back at the input's size
        browser.save_screenshot(str(ARTIFACTS / "serve_page_translate.png"))
        assert severe_console_errors(browser) == []


def test_page_shows_a_bad_request_as_an_error_not_a_broken_image(browser, models):  # noqa: F811
    with running(ServeConfig(model=models["generate"], max_n=4)) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "generate").get_attribute("class"))
        n = browser.find_element(By.ID, "n")
        n.clear()
        n.send_keys("50")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "error").text.startswith("422 invalid request")


def shown_png(driver) -> bytes:
    """The bytes of the image the page shows (its blob: URL, read in the page)."""
    read = ("const done = arguments[arguments.length - 1]; fetch(document.getElementById('output').src)"
            ".then((r) => r.arrayBuffer()).then((b) => done(Array.from(new Uint8Array(b))));")  # fmt: skip
    return bytes(browser_result(driver.execute_async_script(read)))


def browser_result(value):
    assert value is not None, "the page's script returned nothing"
    return value


def set_field(driver, field: str, value: str) -> None:
    element = driver.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def test_page_all_classes_random_seed_download_and_no_stale_image(browser, models, tmp_path):  # noqa: F811
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.get_log("browser")  # what earlier tests left there
    with running(ServeConfig(model=models["generate"], max_n=8)) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "generate").get_attribute("class"))
        # a grid on load, with nothing asked: the default request (16 images cut to max_n 8, seed 0, the first class)
        wait_for_output(browser)
        on_load = {"n": 8, "seed": 0, "labels": ["cat"]}
        assert shown_png(browser) == httpx.post(f"{url}/v1/generate", json=on_load).content
        assert browser.find_element(By.ID, "download").is_displayed()
        # all classes: one row per class, as many images a row as max_n allows (8 // 3 = 2 of the 3 asked for)
        Select(browser.find_element(By.ID, "class")).select_by_visible_text("all classes (a row each)")
        set_field(browser, "n", "3")
        set_field(browser, "seed", "4")
        browser.find_element(By.ID, "go").click()
        wait_for_output(browser)
        expected = {"n": 6, "seed": 4, "nrow": 2, "labels": ["cat", "cat", "dog", "dog", "owl", "owl"]}
        assert shown_png(browser) == httpx.post(f"{url}/v1/generate", json=expected).content
        browser.save_screenshot(str(ARTIFACTS / "serve_page_all_classes.png"))
        # the download button saves the image shown
        browser.find_element(By.ID, "download").click()
        saved = tmp_path / "ganpipe-seed-4.png"
        WebDriverWait(browser, 30).until(lambda d: saved.is_file() and saved.stat().st_size > 0)
        assert saved.read_bytes() == shown_png(browser)
        # a random seed, then an image made with it
        Select(browser.find_element(By.ID, "class")).select_by_visible_text("dog")
        caption = "const c = document.getElementById('caption'); return c ? c.textContent : ''"
        before = browser.execute_script(caption)
        browser.find_element(By.ID, "random-seed").click()
        WebDriverWait(browser, 30).until(lambda d: d.execute_script(caption) not in ("", before))
        seed = browser.find_element(By.ID, "seed").get_attribute("value")
        assert seed != "4" and browser.execute_script(caption).endswith(f"seed {seed}")
        wait_for_output(browser)
        same = httpx.post(f"{url}/v1/generate", json={"n": 3, "seed": int(seed), "labels": ["dog"]}).content
        assert shown_png(browser) == same
        # a failed request leaves no image from the one before
        set_field(browser, "n", "50")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
        assert browser.find_element(By.ID, "error").text.startswith("422 invalid request")
        assert browser.find_elements(By.CSS_SELECTOR, "#result img") == []
        assert "hidden" in browser.find_element(By.ID, "download").get_attribute("class")
        [failed] = severe_console_errors(browser)  # the 422 and nothing else
        assert failed.startswith(f"{url}/v1/generate - Failed to load resource") and "status of 422" in failed


def test_page_psi_slider_truncates_the_images_of_a_model_that_takes_it(browser, psi_model):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    browser.get_log("browser")  # what earlier tests left there
    with running(ServeConfig(model=psi_model, max_n=8)) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "generate").get_attribute("class"))
        assert browser.find_element(By.ID, "psi-label").is_displayed()
        slider = browser.find_element(By.ID, "psi")
        assert [slider.get_attribute(a) for a in ("min", "max", "step", "value")] == ["0", "1", "0.05", "1"]
        assert browser.find_element(By.ID, "psi-value").text == "1.00"
        set_field(browser, "n", "4")
        set_field(browser, "seed", "6")
        browser.find_element(By.ID, "go").click()  # psi 1: the images without truncation
        wait_for_output(browser)
        plain = {"n": 4, "seed": 6, "labels": ["cat"]}
        untruncated = shown_png(browser)
        assert untruncated == httpx.post(f"{url}/v1/generate", json=plain).content
        slider.send_keys(*[Keys.ARROW_LEFT] * 10)  # as a person moves it: 10 steps of 0.05
        assert browser.find_element(By.ID, "psi-value").text == "0.50"
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 30).until(lambda d: wait_for_output(d) and shown_png(d) != untruncated)
        assert shown_png(browser) == httpx.post(f"{url}/v1/generate", json={**plain, "truncation_psi": 0.5}).content
        assert browser.find_element(By.ID, "caption").text.endswith("seed 6, ψ 0.5")
        browser.save_screenshot(str(ARTIFACTS / "serve_page_psi.png"))
        assert browser.find_element(By.ID, "error").text == "" and severe_console_errors(browser) == []


def test_docs_render_the_api_with_nothing_loaded_from_another_host(browser, models):  # noqa: F811
    with running(ServeConfig(model=models["generate"])) as url:
        browser.get_log("performance"), browser.get_log("browser")  # start afresh
        browser.get(url + "/docs")
        WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10)
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/generate", "/v1/translate", "/v2/models/{name}/infer", "/v2/health/ready"} <= paths
        time.sleep(1)  # what the page loads once rendered (fonts, images) is in the log too
        requested = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        urls = {m["params"]["request"]["url"] for m in requested if m["method"] == "Network.requestWillBeSent"}
        assert f"{url}/openapi.json" in urls and f"{url}/docs" in urls
        assert [u for u in urls if not u.startswith((url + "/", "data:", "blob:"))] == []
        browser.save_screenshot(str(ARTIFACTS / "serve_docs.png"))
        assert severe_console_errors(browser) == []
