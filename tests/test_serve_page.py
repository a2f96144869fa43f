"""The try-it page in a real browser: Debian's headless Chromium driven by Selenium
(chromium and chromium-driver: `make test` installs them when missing). Screenshots are kept in
tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_serve import grew, models, request_counts, running  # noqa: F401 (the models fixture is used by name)

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
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for_output(driver) -> int:
    """Wait until the result image has loaded; return its natural width."""
    loaded = "const i = document.getElementById('output'); return i && i.complete && i.naturalWidth > 0"
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(loaded))
    return driver.execute_script("return document.getElementById('output').naturalWidth")


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
        assert options == ["cat", "dog", "owl"]
        Select(browser.find_element(By.ID, "class")).select_by_visible_text("owl")
        seed = browser.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("3")
        browser.find_element(By.ID, "go").click()
        assert wait_for_output(browser) > 16
        browser.save_screenshot(str(ARTIFACTS / "serve_page_generate.png"))
        assert browser.find_element(By.ID, "error").text == ""
        assert severe_console_errors(browser) == []
        made = {k: v for k, v in grew(before, request_counts(url)).items() if k[1] != "latency observations"}
        assert made == {("/", "200"): 1, ("/v1/model", "200"): 1, ("/v1/generate", "200"): 1, ("/metrics", "200"): 1}


def test_page_uploads_an_image_to_translate(browser, models, tmp_path):  # noqa: F811
    from PIL import Image

    picture = tmp_path / "glyph.png"
    Image.new("L", (40, 24), 200).save(picture)
    with running(ServeConfig(model=models["translate"])) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "translate").get_attribute("class"))
        assert "hidden" in browser.find_element(By.ID, "generate").get_attribute("class")
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
