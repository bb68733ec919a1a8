"""End to end on the real AV-Digits table: a small fused model learns, and still predicts without audio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import polyfuse
from polyfuse.config import EncoderConfig
from polyfuse.data.datasets import build_av_digits
from polyfuse.init_config import init_config
from polyfuse.training.run import train


@pytest.mark.realdata
def test_small_fused_model_on_av_digits(shared_data: Path, tmp_path: Path) -> None:
    table = build_av_digits(tmp_path / "av", shared_data)
    config = init_config(table, ["label"], tmp_path / "config.yaml")
    assert config.data.preprocessing.image.size == (28, 28) and config.data.preprocessing.image.mode == "L"
    assert config.data.preprocessing.audio.sample_rate == 8000
    config = config.model_copy(
        update={
            "encoders": {
                "image": EncoderConfig(name="image.cnn", options={"widths": [16, 32], "blocks_per_stage": 1}),
                "audio": EncoderConfig(name="audio.cnn", options={"widths": [16, 32]}),
            },
            "training": config.training.model_copy(update={"epochs": 5, "learning_rate": 3e-3}),
            "data": config.data.model_copy(update={"cache_dir": tmp_path / "cache"}),
        }
    )
    result = train(config, tmp_path / "run", show_progress=False, log=lambda *_: None)
    test = result.metrics["test"]["label"]
    assert test["rows"] == 300
    assert test["accuracy"] > 0.8, test  # chance is 0.1; the full default run reaches 0.99 (bench/fusion.py)
    assert sum(map(sum, test["confusion_matrix"])) == 300

    predictor = polyfuse.load(result.model_dir)
    frame = pd.read_csv(table)
    rows: Any = frame[frame["split"] == "test"].drop(columns=["audio"]).head(100)
    predicted = predictor.predict(rows, base_dir=table.parent)["label"].astype(int)
    # Image only (the audio column absent): still well above chance (0.1) on the image alone.
    assert (predicted.to_numpy() == rows["label"].to_numpy()).mean() > 0.6
