"""Every registered fusion, end to end: a table on disk → `polyfuse train` → model directory → `polyfuse.load`
from a relative path → predictions that reproduce the test metrics saved at the end of training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import polyfuse
from polyfuse.cli import app
from polyfuse.models.fusion import FUSIONS, list_fusions

runner = CliRunner()


@pytest.mark.parametrize("fusion", list_fusions())
def test_fusion_trains_from_a_table_and_its_model_reloads(
    fusion: str,
    synthetic_table: Path,
    small_config: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_path = tmp_path / "config.yaml"
    small_config(synthetic_table, config_path, epochs=1, fusion=fusion)
    result = runner.invoke(app, ["train", str(config_path), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output

    monkeypatch.chdir(tmp_path)
    predictor = polyfuse.load("run/model")
    assert isinstance(predictor.model.fusion, FUSIONS[fusion])  # type: ignore[arg-type]
    saved = json.loads(Path("run/model/metrics.json").read_text())["test"]["label"]
    frame = pd.read_csv(synthetic_table)
    test = frame[frame["split"] == "test"]
    proba = predictor.predict_proba(test, base_dir=synthetic_table.parent)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    predicted = predictor.predict(test, base_dir=synthetic_table.parent)["label"]
    accuracy = float((predicted.to_numpy() == test["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(saved["accuracy"], abs=1e-6)
    # a row that lacks most inputs still gets a prediction
    lone = predictor.predict([{"image": str(synthetic_table.parent / "images/00001.png")}])
    assert lone["label"].iloc[0] in {"class_0", "class_1", "class_2"}
