"""The web page at / in a real browser (Debian's chromium driven by Selenium): upload, bars, errors, keyboard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the page test needs selenium (the dev extra)")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"{CHROMIUM} / {CHROMEDRIVER} missing: `make test` installs them with apt (chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,820"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_page_classifies_an_uploaded_image_like_the_api(browser, api_server, val_images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    image = val_images[7]
    status, _, answer = api_server.classify(image.read_bytes())
    assert status == 200
    browser.get(f"http://127.0.0.1:{api_server.port}/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "shufflenet_v2_x0_5" in d.find_element(By.ID, "card").text)
    card = browser.find_element(By.ID, "card").text
    assert "torch / fp32" in card and "32 × 32 px" in card and "validation top-1" in card

    # keyboard: Tab reaches the drop zone, which is a focusable button
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert (
        focused.get_attribute("id") in ("drop", "file")
        and browser.find_element(By.ID, "drop").get_attribute("tabindex") == "0"
    )

    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 5)
    rows = browser.find_elements(By.CSS_SELECTOR, "#results li")
    labels = [row.find_element(By.CLASS_NAME, "label").text for row in rows]
    percents = [float(row.find_element(By.CLASS_NAME, "pct").text.rstrip(" %")) for row in rows]
    assert labels == [entry["label"] for entry in answer["predictions"][0]["top_k"]]
    assert percents[0] == pytest.approx(100 * answer["predictions"][0]["probability"], abs=0.06)
    assert percents == sorted(percents, reverse=True)
    width = rows[0].find_element(By.CLASS_NAME, "fill").size["width"]
    full = rows[0].find_element(By.CLASS_NAME, "bar").size["width"]
    assert width == pytest.approx(full * percents[0] / 100, abs=2)
    assert "latency" in browser.find_element(By.ID, "latency").text
    assert browser.execute_script("return document.getElementById('preview').naturalWidth") == 32
    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
    shutil.copy(shot, Path(api_server.log).parent / "page.png")  # kept beside the server log as the artifact

    bad = tmp_path / "broken.png"
    bad.write_bytes(image.read_bytes()[:60])  # a real PNG, cut short
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error").text
    assert "422" in error and "bad_image" in error
    assert not browser.find_elements(By.CSS_SELECTOR, "#results li")
    browser.save_screenshot(str(tmp_path / "page-error.png"))


def test_openapi_page_renders_offline(browser, api_server):
    """/docs: Swagger UI from the package itself (this browser reaches nothing but 127.0.0.1) lists the routes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status, _, html = api_server.request("GET", "/docs")
    scripts = [part.split('"')[1] for part in html.decode().split(" src=")[1:]]
    assert status == 200 and scripts and all(src.startswith("/") for src in scripts), scripts  # no CDN
    browser.get(f"http://127.0.0.1:{api_server.port}/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {element.text for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/classify", "/v1/model", "/healthz", "/readyz"} <= {p.replace("\u200b", "") for p in paths}
