"""``cnn-xp serve``'s page in a real headless browser (selenium with Debian's chromium and
chromium-driver): a vertical stroke drawn on the canvas with the mouse is called "1" by a
simple_convnet trained briefly on real MNIST, with the bars, Grad-CAM and feature maps drawn.
Skips, saying why, without selenium, a browser or its driver, or real MNIST."""
import os
import shutil
import threading
from pathlib import Path

import pytest

from cnn_xp.app import cli, serve
from mnist_data import require_mnist
from tiny_idx import draw_digit_one

pytestmark = pytest.mark.slow
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def browser_paths():
    """(browser, driver) paths, or skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in DRIVERS if os.access(p, os.X_OK)), None) or shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1240,720"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))  # no online driver lookup
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """simple_convnet trained for 2 epochs on 20000 real MNIST images (about 10 s)."""
    data = require_mnist()
    out = tmp_path_factory.mktemp("mnist-run") / "run"
    argv = ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", str(data), "--out", str(out),
            "--limit-train", "20000", "--limit-test", "1000", "--epochs", "2", "--no-download", "--no-progress"]
    assert cli.main(argv) == 0
    predictor = serve.Predictor.load(out / "checkpoint.npz")
    one = Path(draw_digit_one(tmp_path_factory.mktemp("one") / "one.png")).read_bytes()
    assert predictor.answer(one)["class"] == "1"  # the model itself knows a "1"
    return predictor


@pytest.fixture(scope="module")
def page(model):
    srv = serve.make_server(model, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield serve.url_of(srv)
    srv.shutdown()
    srv.server_close()


def draw_vertical_stroke(driver):
    from selenium.webdriver.common.action_chains import ActionChains

    pad = driver.find_element("id", "pad")
    chain = ActionChains(driver).move_to_element_with_offset(pad, 0, -90).click_and_hold()
    for _ in range(9):
        chain.move_by_offset(0, 20)
    chain.release().perform()


def wait_for_prediction(driver, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    el = driver.find_element("id", "prediction")
    WebDriverWait(driver, timeout).until(lambda d: el.text not in ("", "–"))
    return el.text


def test_a_vertical_stroke_is_a_one(browser, page, tmp_path):
    browser.get(page)
    assert browser.find_element("id", "prediction").text == "–"
    draw_vertical_stroke(browser)
    assert wait_for_prediction(browser) == "1"
    bars = browser.find_elements("css selector", "#bars .bar")
    assert len(bars) == 10 and "top" in bars[1].get_attribute("class")
    assert browser.find_element("id", "gradcam").get_attribute("src").startswith("data:image/png;base64,")
    assert browser.find_elements("css selector", "#features .maps img")
    assert browser.execute_script("return document.getElementById('gradcam').naturalWidth") > 0
    shot = tmp_path / "serve.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("CNN_XP_SERVE_SCREENSHOT")  # docs/images/serve.png is made this way
    if target:
        from PIL import Image

        with Image.open(shot) as img:
            img.convert("RGB").quantize(128).save(target, optimize=True)


def test_clear_resets_the_page(browser, page):
    browser.get(page)
    draw_vertical_stroke(browser)
    wait_for_prediction(browser)
    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "prediction").text == "–"
    assert not browser.find_elements("css selector", "#bars .bar")
    blank = browser.execute_script(
        "const c = document.getElementById('pad'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "return d.every(v => v === 255);")
    assert blank


def test_a_dropped_file_is_classified(browser, page, tmp_path):
    """The file input (the drop zone's click-to-open twin) sends the file itself."""
    one = draw_digit_one(tmp_path / "one.png", (200, 300), False)
    browser.get(page)
    browser.find_element("id", "file").send_keys(str(one))
    assert wait_for_prediction(browser) == "1"
