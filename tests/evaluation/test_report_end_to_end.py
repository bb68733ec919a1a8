"""Calibration, robustness, the HTML report (in a real headless browser) and cross-validation, end to end
through the CLI on the planted model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import polyfuse
from polyfuse.commands import split_positions
from polyfuse.evaluation.calibration import expected_calibration_error, split_logits
from polyfuse.evaluation.contribution import modality_contribution
from polyfuse.evaluation.robustness import robustness_curves

CLI = [sys.executable, "-m", "polyfuse.cli"]


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def test_calibrate_saves_a_temperature_that_predict_uses(planted: tuple[Path, Path], tmp_path: Path) -> None:
    table, model_dir = planted
    model = _copy(model_dir, tmp_path)
    rows = pd.read_csv(table).head(20)
    before = polyfuse.load(model).predict_proba(rows, base_dir=table.parent).to_numpy()
    done = subprocess.run([*CLI, "calibrate", str(model), str(table)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    saved = json.loads((model / "calibration.json").read_text())
    temperature = saved["targets"]["label"]["temperature"]
    assert saved["bins"] == 15 and saved["fitted_on"] == "val" and "test" in saved["targets"]["label"]
    assert f"temperature {temperature:.4f}" in done.stdout
    predictor = polyfuse.load(model)
    after = predictor.predict_proba(rows, base_dir=table.parent).to_numpy()
    # softmax(z / T) from softmax(z): log-probabilities scale by 1/T up to a per-row constant.
    expected = torch.softmax(torch.log(torch.tensor(before)) / temperature, -1).numpy()
    np.testing.assert_allclose(after, expected, atol=1e-4)
    assert (after.argmax(1) == before.argmax(1)).all()
    # The fitting split's NLL does not get worse (the temperature minimises it).
    val = saved["targets"]["label"]["val"]
    assert val["nll_after"] <= val["nll_before"] + 1e-9


def test_robustness_curves_are_deterministic_and_removal_hurts(planted: tuple[Path, Path]) -> None:
    table_path, model_dir = planted
    predictor = polyfuse.load(model_dir)
    table, positions = split_positions(predictor, table_path, "test")
    test = table.subset(positions[:40])
    first = robustness_curves(predictor, test, inputs=["image"])
    assert first == robustness_curves(predictor, test, inputs=["image"])  # seeded: the same numbers
    removal = first["curves"]["image"]["removal"]["values"]
    assert len(removal) == 11 and removal[0] == first["clean"]
    assert removal[-1] < removal[0] - 0.3  # the image carries the label: without it, near chance
    assert set(first["curves"]["image"]) == {"gaussian_noise", "occlusion", "blur", "removal"}


def test_report_html_renders_in_a_browser_and_json_matches_a_recomputation(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    table_path, model_dir = planted
    out = tmp_path / "report.html"
    done = subprocess.run(
        [*CLI, "report", str(model_dir), str(table_path), "--split", "test", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    html = out.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    assert "<audio" in html or not report["errors"]
    assert "data:image/png;base64," in html or not report["errors"]

    # The numbers match a recomputation.
    predictor = polyfuse.load(model_dir)
    table, positions = split_positions(predictor, table_path, "test")
    test = table.subset(positions)
    contribution = modality_contribution(predictor, test)
    for name, drop in report["modality_contribution"].items():
        assert drop == pytest.approx(contribution["inputs"][name]["drop_removed"], abs=1e-9)
    assert report["modality_contribution"]["image"] > 0.4
    logits, labels = split_logits(predictor, test)["label"]
    assert report["calibration"]["ece"] == pytest.approx(
        expected_calibration_error(torch.softmax(logits.double(), -1), labels), abs=1e-9
    )
    assert report["metrics"]["label"]["accuracy"] == pytest.approx(
        predictor.evaluate(test)["label"]["accuracy"]
    )
    assert sum(v["support"] for v in report["per_class"]["per_class"].values()) == len(test)
    assert report["learning_curves"]["epoch"]

    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists():
        pytest.skip("chromium / chromedriver not installed (apt: chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(out.resolve().as_uri())
        assert driver.find_element("tag name", "h1").text == "polyfuse report"
        shown = {e.get_attribute("data-plot"): e for e in driver.find_elements("css selector", "svg.plot")}
        assert set(shown) == set(report["plots"])
        assert {
            "confusion_matrix",
            "contribution",
            "reliability",
            "robustness_image",
            "robustness_audio",
        } <= set(shown)
        for name, element in shown.items():
            assert element.size["width"] > 100 and element.size["height"] > 100, name
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        images = driver.find_elements("css selector", "img.error-image")
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    finally:
        driver.quit()


def test_cv_folds_never_train_on_their_own_test_fold(
    synthetic_table: Path, tmp_path: Path, small_config: object
) -> None:
    from polyfuse.data.prepare import draw_splits, resolve_schema
    from polyfuse.data.table import read_table

    config_path = tmp_path / "config.yaml"
    small_config(synthetic_table, config_path, epochs=1)  # type: ignore[operator]
    done = subprocess.run(
        [*CLI, "cv", str(config_path), "--folds", "3", "-o", str(tmp_path / "cv"), "-q"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "cv" / "cv.json").read_text())
    accuracy = summary["metrics"]["label"]["accuracy"]
    assert len(accuracy["folds"]) == 3
    assert accuracy["mean"] == pytest.approx(float(np.mean(accuracy["folds"])))
    assert "± " in done.stdout
    folds = pd.read_csv(tmp_path / "cv" / "folds.csv")
    ids = pd.read_csv(synthetic_table)["id"]
    seen_in_test: list[str] = []
    for k in range(3):
        model = polyfuse.load(tmp_path / "cv" / f"fold_{k}" / "run" / "model")
        data = model.config.data
        table = read_table(data.table)
        # The split training used, drawn again from the fold model's own saved config.
        splits = draw_splits(table, data, resolve_schema(table, data))
        test_ids = set(table.frame["id"][splits == "test"])
        trained_ids = set(table.frame["id"][splits != "test"])
        assert test_ids == set(ids[folds["fold"] == k]) and not test_ids & trained_ids
        seen_in_test += list(test_ids)
    assert sorted(seen_in_test) == sorted(ids)  # every row is tested exactly once
    # A rerun resumes: every fold is already done.
    again = subprocess.run(
        [*CLI, "cv", str(config_path), "--folds", "3", "-o", str(tmp_path / "cv")],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and again.stdout.count("already done") == 3, again.stdout
