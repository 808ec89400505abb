"""The report in a real browser: Debian's chromium, driven by Selenium, opens it from file://.

Every link and image of every page is checked on disk (no 404, no broken image); one page
of each kind per array (index, layer, units, classes, images, optimized images) is loaded in
the browser with no console error and every image decoded; the layer table sorts and
filters; a hostile class name renders as text. Screenshots go to the test's folder.
"""
from __future__ import annotations

import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from conftest import invoke, write_image

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "install them with: apt-get install chromium chromium-driver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        if os.environ.get("ACTDB_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} or {DRIVER} is missing; {INSTALL}")
        pytest.skip(f"{CHROMIUM} or {DRIVER} is missing; {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1100"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report(tiny_store_template, tiny_model_path, tmp_path_factory):
    """The tiny store plus a class folder named like an attack, an optimized image, and its report."""
    store = tmp_path_factory.mktemp("browser") / "store"
    shutil.copytree(tiny_store_template, store)
    hostile = store.parent / "hostile" / "<img src=x onerror=alert(1)>"
    rng = np.random.default_rng(4)
    for i in range(3):
        write_image(hostile / f"h{i}.png", rng)
    assert invoke("--store", store, "ingest", hostile.parent, "--model", tiny_model_path, "--preprocess", "tf",
                  "--layers", "conv2,fc", "--quiet").exit_code == 0
    result = invoke("--store", store, "optimize", "--model", tiny_model_path, "--preprocess", "tf", "--layer", "conv2",
                    "--units", "3", "--steps", 4, "--size", 32, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("--store", store, "report")
    assert result.exit_code == 0, result.output
    return store / "report"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("href", "src"):
            if attrs.get(name):
                self.targets.append((tag, attrs[name]))


def test_every_link_and_image_of_every_page_exists(report):
    pages = list(report.rglob("*.html"))
    assert len(pages) > 50
    checked = set()
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        assert parser.targets, page
        for tag, target in parser.targets:
            assert not urlparse(target).scheme, f"{page}: {target} leaves the report"
            path = (page.parent / unquote(target)).resolve()
            assert path.is_file(), f"{page.relative_to(report)} links {target}: missing"
            assert report.resolve() in path.parents, f"{page}: {target} points outside the report"
            if tag == "img" and path not in checked:
                with Image.open(path) as image:
                    image.verify()
                checked.add(path)


def _load(browser, page: Path):
    browser.get(page.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"{page}: {errors}"
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => i.loading !== 'lazy' || i.complete)"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert not broken, f"{page}: broken images {broken}"


def test_pages_of_every_kind_load_without_console_errors(report, browser, tmp_path):
    kinds = [report / "index.html", report / "tiny/conv2/index.html", report / "tiny/conv2/3.html",
             report / "tiny/fc/0.html", report / "class/tench.html", report / "image/0.html",
             *report.glob("optimized/*.html")]
    assert len(kinds) == 7
    for page in kinds:
        _load(browser, page)
        browser.save_screenshot(str(tmp_path / f"{page.parent.name}-{page.stem}.png"))
    unit = (report / "tiny/conv2/3.html").read_text()
    assert 'href="../../optimized/' in unit  # the unit's feature visualization, linked both ways
    assert "tiny/conv2/3.html" in next(report.glob("optimized/*.html")).read_text()


def test_the_layer_table_sorts_and_filters(report, browser):
    from selenium.webdriver.common.by import By

    browser.get((report / "tiny/conv2/index.html").as_uri())
    header = browser.find_element(By.XPATH, "//th[text()='density']")

    def column(index: int) -> list[float]:
        return browser.execute_script(
            f"return Array.from(document.querySelectorAll('#units tbody tr'))"
            f".filter(r => r.style.display !== 'none').map(r => parseFloat(r.cells[{index}].dataset.value))")

    header.click()
    values = column(3)
    assert values == sorted(values, reverse=True) and len(values) == 16
    header.click()
    assert column(3) == sorted(values)
    browser.find_element(By.XPATH, "//th[text()='unit']").click()
    assert column(0) == sorted(column(0), reverse=True)
    box = browser.find_element(By.ID, "filter")
    box.send_keys("tench")
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#units tbody tr'))"
                                   ".filter(r => r.style.display !== 'none').map(r => r.cells[6].textContent)")
    assert shown and all("tench" in text for text in shown)
    assert browser.find_element(By.ID, "shown").text == str(len(shown))
    box.clear()
    box.send_keys("7")
    assert column(0) == [7.0]


def test_a_hostile_class_name_renders_as_text(report, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    pages = list(report.rglob("*.html"))
    assert any("&lt;img src=x onerror=alert(1)&gt;" in p.read_text() for p in pages)
    assert not any("<img src=x" in p.read_text() for p in pages)
    page = next(p for p in (report / "class").glob("*.html") if p.name.startswith("_img"))
    browser.get(page.as_uri())
    time.sleep(0.2)
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 - no script ran
    assert browser.find_element(By.TAG_NAME, "h1").text == "class <img src=x onerror=alert(1)>"
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']")


@pytest.mark.timeout(600)  # the first test to ask for the demo runs all of it (demo_run), ~2 min alone
def test_the_demo_layer_of_1280_units_is_interactive_in_under_2_s(demo_run, browser):
    store, _ = demo_run
    page = store / "report" / "efficientnet_lite0" / "top_activation" / "index.html"
    browser.get(page.as_uri())
    ready = browser.execute_script("const t = performance.timing; return t.domInteractive - t.navigationStart")
    rows = browser.execute_script("return document.querySelectorAll('#units tbody tr').length")
    assert rows == 1280 and ready < 2000, ready
    unit = store / "report" / "efficientnet_lite0" / "top_activation" / "112.html"
    parser = _Links()
    parser.feed(unit.read_text())
    images = {(unit.parent / t).resolve() for tag, t in parser.targets if tag == "img"}
    assert unit.stat().st_size + sum(p.stat().st_size for p in images) < 300_000
