"""Several targets in one model: classification with class weights, multi-label and regression, plus
per-input auxiliary heads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import polyfuse
from polyfuse.config import HeadConfig
from polyfuse.training.run import train


def test_multitask_classification_multilabel_regression(
    synthetic_table: Path, tmp_path: Path, small_config: Any
) -> None:
    frame = pd.read_csv(synthetic_table)
    rng = np.random.default_rng(0)
    label_id = frame["label"].str[-1].astype(int)
    frame["score"] = 10.0 * label_id + rng.normal(
        0, 0.5, len(frame)
    )  # regression, recoverable from the label
    frame["tags"] = [
        "|".join(t for t, on in (("low", i == 0), ("mid", i >= 1), ("top", i == 2)) if on) for i in label_id
    ]
    table = synthetic_table.parent / "multitask.csv"
    frame.to_csv(table, index=False)

    config = small_config(table, tmp_path / "config.yaml", epochs=12)
    data = config.data.model_copy(
        update={
            "targets": {"label": None, "score": "regression", "tags": None},
            "columns": {**config.data.columns, "score": "label", "tags": "label"},
        }
    )
    config = config.model_copy(
        update={
            "data": data,
            "heads": {"label": HeadConfig(class_weights="balanced"), "score": HeadConfig(hidden_dim=16)},
            "training": config.training.model_copy(update={"aux_loss_weight": 0.3}),
        }
    )
    result = train(config, tmp_path / "run", show_progress=False, log=lambda *_: None)
    test = result.metrics["test"]
    assert set(test) == {"label", "score", "tags"}
    assert test["label"]["accuracy"] > 0.6
    assert {"mae", "rmse", "r2"} <= set(test["score"]) and test["score"]["r2"] > 0.3
    assert {"subset_accuracy", "macro_f1"} <= set(test["tags"]) and test["tags"]["micro_f1"] > 0.6

    logged = (tmp_path / "run" / "logs" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for name in (
        "train_label_loss_epoch",
        "train_score_loss_epoch",
        "train_tags_loss_epoch",
        "train_aux_loss_epoch",
    ):
        assert name in logged

    predictor = polyfuse.load(result.model_dir)
    out = predictor.predict(frame.head(20), base_dir=table.parent)
    assert list(out.columns) == ["label", "score", "tags"]
    assert out["score"].between(-20, 40).all()  # un-standardised back to the target's units
    assert set("|".join(out["tags"]).split("|")) <= {"low", "mid", "top", ""}
    assert set(predictor.predict_proba(frame.head(5), target="tags", base_dir=table.parent).columns) == {
        "low",
        "mid",
        "top",
    }
