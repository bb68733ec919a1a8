"""The playground page in a real headless Chromium (selenium + Debian's chromium and chromium-driver): a
small AV-Digits model served with an API key; type the key, choose a real test image and audio clip, press
Predict, and the page shows the digit — with no error in the browser console."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_process import POLYFUSE, _free_port, _wait_ready

import polyfuse
from polyfuse.config import EncoderConfig
from polyfuse.data.datasets import build_av_digits
from polyfuse.init_config import init_config
from polyfuse.training.run import train

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
KEY = "playground-key-0123456789"


@pytest.fixture(scope="module")
def av_model(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(AV-Digits table, a small image + audio model trained on it for 3 epochs)."""
    work = tmp_path_factory.mktemp("av-playground")
    table = build_av_digits(work / "av", shared_data)
    config = init_config(table, ["label"], work / "config.yaml")
    config = config.model_copy(
        update={
            "encoders": {
                "image": EncoderConfig(name="image.cnn", options={"widths": [16, 32], "blocks_per_stage": 1}),
                "audio": EncoderConfig(name="audio.cnn", options={"widths": [16, 32]}),
            },
            "training": config.training.model_copy(update={"epochs": 3, "learning_rate": 3e-3}),
            "data": config.data.model_copy(update={"cache_dir": work / "cache"}),
        }
    )
    result = train(config, work / "run", show_progress=False, log=lambda *_: None)
    return table, result.model_dir


def test_playground_predicts_a_real_av_digits_row(av_model: tuple[Path, Path], tmp_path: Path) -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"headless Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium "
            "chromium-driver (make test does it on CI)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    table, model = av_model
    frame = pd.read_csv(table)
    test_rows = frame[frame["split"] == "test"].head(20)
    predicted = polyfuse.load(model).predict(test_rows, base_dir=table.parent)["label"].astype(int)
    right = test_rows[predicted.to_numpy() == test_rows["label"].to_numpy()]
    assert len(right) > 0, "the small model should get some test rows right"
    row = right.iloc[-1]  # a row the model gets right; the page must show its true digit

    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    port = _free_port()
    server = subprocess.Popen(
        [*POLYFUSE, "serve", str(model), "--port", str(port), "--api-keys", str(keys)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        _wait_ready(port, server)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}/")
        assert "API key" in driver.find_element(By.ID, "error").text  # asks for the key, sends nothing
        driver.find_element(By.ID, "key").send_keys(KEY, Keys.TAB)  # change event: loads the fields
        image_input = wait.until(ready.presence_of_element_located((By.ID, "field-image")))
        image_input.send_keys(str((table.parent / row["image"]).resolve()))
        driver.find_element(By.ID, "field-audio").send_keys(str((table.parent / row["audio"]).resolve()))
        driver.find_element(By.ID, "predict").click()
        shown = wait.until(
            ready.presence_of_element_located((By.CSS_SELECTOR, '.prediction[data-target="label"]'))
        )
        assert shown.text == str(row["label"])
        assert driver.find_element(By.ID, "error").text == ""
        assert (
            len(driver.find_elements(By.CSS_SELECTOR, "#result table tr")) == 10
        )  # every digit's probability
        problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert problems == [], problems
    finally:
        if driver is not None:
            driver.quit()
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=300)  # drains the pipes while it stops
        assert server.returncode == 0, log.decode()[-3000:]
