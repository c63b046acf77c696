"""GET /ui: the page for people, served by the service; and a headless Chromium driving it end to end.

The browser test needs Debian's `chromium` and `chromium-driver` (`make browser` installs them where it
can) and the `selenium` package; it skips without them. With FACECHECK_SCREENSHOT=docs/ui.png it saves
its screenshot there (the README's picture), otherwise in the test's temporary folder.
"""
from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
import requests

from service.config import REPO_ROOT
from service_fixtures import ANGLES, ENV_KEY, SHARED_DATA, WRONG_KEY, encode, gradient, synthetic_face

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless, and nothing that reaches for the network: the machine may have none.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900")
WAIT_S = 600


def test_page_is_served_and_self_contained(server):
    response = requests.get(f"{server.url}/ui", timeout=120)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert re.search(r'<input[^>]+type="file"[^>]+multiple', page) and 'accept="image/*"' in page
    assert re.search(r"https?://", page) is None  # no CDN, no external script, style or font: it works offline
    assert "/classify" in page and "/annotate" in page
    assert requests.get(f"{server.url}/docs", timeout=120).status_code == 200  # Swagger UI stays where it was


@pytest.fixture()
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); `make browser` installs them as root")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def photos(folder: Path) -> list[Path]:
    """A fake and a real photo from the shared data set, or a drawn face where this checkout has none."""
    picks = [sorted((SHARED_DATA / subset).glob("*.jpg"))[:1] for subset in ("rff/fake", "utk-real/real")]
    if all(picks):
        return [files[0] for files in picks]
    drawn = folder / "drawn-face.jpg"
    drawn.write_bytes(encode(synthetic_face(seed=4)))
    return [drawn]


def upload(driver, files: list[Path]) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys("\n".join(str(path) for path in files))


def card_for(driver, name: str):
    """The file's card once its answer is shown (a verdict, or an error), with its face boxes drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver):
        for card in driver.find_elements(By.CSS_SELECTOR, "section.card"):
            if card.get_attribute("data-file") != name:
                continue
            if card.find_elements(By.CSS_SELECTOR, ".error"):
                return card
            verdict = card.find_elements(By.CSS_SELECTOR, ".verdict")
            images = card.find_elements(By.CSS_SELECTOR, ".stage img")
            if verdict and images and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", images[0]):
                return card
        return False

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(ready, f"no answer for {name} on the page")


def screenshot_path(tmp_path: Path) -> Path:
    wanted = os.environ.get("FACECHECK_SCREENSHOT")
    if not wanted:
        return tmp_path / "ui.png"
    path = Path(wanted)
    return path if path.is_absolute() else REPO_ROOT / path


def save_full_page(driver, path: Path) -> None:
    """A PNG of the whole page, not only the window (Chromium's DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_in_a_browser_shows_boxes_verdicts_and_errors(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/ui")
    assert "facecheck" in browser.title
    files = photos(tmp_path)
    upload(browser, files)
    for path in files:
        expected = requests.post(f"{server.url}/classify", files={"image": (path.name, path.read_bytes(), "image/jpeg")}, timeout=120).json()
        card = card_for(browser, path.name)
        verdict = card.find_element(By.CSS_SELECTOR, ".verdict")
        assert verdict.get_attribute("data-verdict") == expected["verdict"]
        assert verdict.text.startswith(expected["verdict"].upper()) and f"{expected['fake_probability']:.2f}" in verdict.text
        boxes = card.find_elements(By.CSS_SELECTOR, ".face-box")
        assert len(boxes) == len(expected["faces"]) >= 1
        image = card.find_element(By.CSS_SELECTOR, ".stage img")
        natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        shown = image.rect
        for box, face in zip(boxes, expected["faces"]):
            assert face["label"] in box.get_attribute("class").split()
            assert box.find_element(By.CSS_SELECTOR, ".face-tag").text == f"{face['label']} {face['fake_probability']:.2f}"
            # The box sits where the face is, scaled to the picture as shown (clipped to its edges).
            x1 = max(0.0, face["box"][0]) / natural[0] * shown["width"] + shown["x"]
            y2 = min(natural[1], face["box"][3]) / natural[1] * shown["height"] + shown["y"]
            assert box.rect["x"] == pytest.approx(x1, abs=3) and box.rect["y"] + box.rect["height"] == pytest.approx(y2, abs=3)
        boxes[0].click()  # the per-rotation breakdown of that face
        assert "selected" in boxes[0].get_attribute("class").split()
        rows = card.find_elements(By.CSS_SELECTOR, ".tta .tta-row")
        assert len(rows) == len(ANGLES)
        assert [row.text.split()[-1] for row in rows] == [f"{p:.2f}" for _, p in sorted(expected["faces"][0]["tta"].items(), key=lambda kv: float(kv[0]))]

    save_full_page(browser, screenshot_path(tmp_path))

    ramp, junk = tmp_path / "ramp.png", tmp_path / "notes.jpg"
    gradient().save(ramp)
    junk.write_text("not a photo")
    upload(browser, [ramp, junk])
    note = card_for(browser, ramp.name).find_element(By.CSS_SELECTOR, ".noface")
    assert "No face was found" in note.text and "whole image" in note.text
    assert not card_for(browser, ramp.name).find_elements(By.CSS_SELECTOR, ".face-box")
    error = card_for(browser, junk.name).find_element(By.CSS_SELECTOR, ".error")
    assert "400" in error.text and "not_an_image" in error.text


def test_page_says_when_a_photo_on_its_side_was_read_turned(server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    originals = sorted((SHARED_DATA / "lfw-real" / "real").glob("*.jpg"))[:1]
    if not originals:
        pytest.skip(f"needs a photo in {SHARED_DATA / 'lfw-real' / 'real'}")
    sideways = tmp_path / "sideways.png"
    Image.open(originals[0]).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(sideways)
    expected = requests.post(f"{server.url}/classify", files={"image": (sideways.name, sideways.read_bytes(), "image/png")}, timeout=120).json()
    assert expected["turned"] == 270
    browser.get(f"{server.url}/ui")
    upload(browser, [sideways])
    verdict = card_for(browser, sideways.name).find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.get_attribute("data-verdict") == expected["verdict"]
    assert "read with the photo turned 270\u00b0 to stand upright" in verdict.text


def test_page_shows_an_uncertain_answer_in_amber_and_says_what_it_means(browser, banded_server, known, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{banded_server.url}/ui")
    photo = tmp_path / "face.jpg"
    photo.write_bytes(known.inside)
    upload(browser, [photo])
    card = card_for(browser, photo.name)
    verdict = card.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.get_attribute("data-verdict") == "uncertain" and verdict.text.startswith("UNCERTAIN")
    note = card.find_element(By.CSS_SELECTOR, ".uncertain-note")
    assert f"({known.band[0]:.2f} to {known.band[1]:.2f})" in note.text and "have a person look" in note.text
    amber = "rgb(245, 158, 11)"
    assert browser.execute_script("return getComputedStyle(arguments[0]).borderTopColor", note) == amber
    (box,) = card.find_elements(By.CSS_SELECTOR, ".face-box")
    assert "uncertain" in box.get_attribute("class").split() and box.find_element(By.CSS_SELECTOR, ".face-tag").text.startswith("uncertain ")
    assert browser.execute_script("return getComputedStyle(arguments[0]).borderTopColor", box) == amber


def test_page_asks_for_a_key_on_401_and_keeps_it_in_the_tab_only(keyed_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def question(wanted: str):
        def shown(driver):
            form = driver.find_element(By.ID, "key")
            return form if form.is_displayed() and wanted in form.text else False
        return WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(shown, f"the page never asked: {wanted}")

    def give(key: str) -> None:
        field = browser.find_element(By.ID, "api-key")
        field.send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#key button[type=submit]").click()

    browser.get(f"{keyed_server.url}/ui")
    first, second = tmp_path / "first.jpg", tmp_path / "second.jpg"
    first.write_bytes(encode(synthetic_face(seed=4)))
    second.write_bytes(encode(synthetic_face(seed=6)))
    upload(browser, [first])
    question("This server needs an API key")
    give(WRONG_KEY)
    question("The server refused that key")
    give(ENV_KEY)
    assert card_for(browser, first.name).find_element(By.CSS_SELECTOR, ".verdict").get_attribute("data-verdict") in ("real", "fake", "uncertain")
    assert browser.execute_script("return sessionStorage.getItem('facecheck.apiKey')") == ENV_KEY
    assert browser.execute_script("return [localStorage.length, document.cookie]") == [0, ""]
    upload(browser, [second])  # the tab's key goes with every later request: no question
    assert card_for(browser, second.name).find_elements(By.CSS_SELECTOR, ".verdict")
    assert not browser.find_element(By.ID, "key").is_displayed()
