"""training.precision auto: bf16 autocast only on a CPU with native bf16 and for objectives checked in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import polyfuse
from polyfuse.config import TrainingConfig
from polyfuse.training.precision import resolve_precision
from polyfuse.training.run import train


def _native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


@pytest.mark.parametrize(
    ("native", "accelerator", "objectives", "expected"),
    [
        (True, "cpu", ["supervised"], "bf16-mixed"),
        (True, "auto", ["supervised"], "bf16-mixed"),  # this test box has no GPU
        (False, "cpu", ["supervised"], "32"),  # emulated bf16 is slower than fp32
        (True, "cpu", ["supervised", "contrastive"], "32"),  # contrastive is not checked in bf16
        (True, "gpu", ["supervised"], "32"),
    ],
)
def test_auto_takes_bf16_only_where_it_was_measured(
    monkeypatch: pytest.MonkeyPatch, native: bool, accelerator: str, objectives: list[str], expected: str
) -> None:
    _native_bf16(monkeypatch, native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    precision, why = resolve_precision(TrainingConfig(accelerator=accelerator), objectives)
    assert precision == expected
    assert ("contrastive" in why) == ("contrastive" in objectives)


@pytest.mark.parametrize("given", ["32", "bf16-mixed", "16-mixed"])
def test_a_given_precision_is_kept(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    _native_bf16(monkeypatch, False)
    assert resolve_precision(TrainingConfig(precision=given), ["contrastive"]) == (given, "as configured")


def test_default_is_auto() -> None:
    assert TrainingConfig().precision == "auto"


def _train_and_watch(config: Any, run_dir: Path) -> tuple[Any, str, list[str]]:
    import lightning as L

    class Watch(L.Callback):
        """Whether the model's forward ran under CPU autocast in the training steps."""

        def __init__(self) -> None:
            self.autocast_in_step: list[bool] = []

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            forward = pl_module.model.forward

            def watched(*args: Any, **kwargs: Any) -> Any:
                self.autocast_in_step.append(torch.is_autocast_enabled("cpu"))
                return forward(*args, **kwargs)

            pl_module.model.forward = watched  # type: ignore[method-assign]

    watch = Watch()
    lines: list[str] = []
    result = train(config, run_dir, show_progress=False, log=lines.append, callbacks=[watch])
    assert watch.autocast_in_step and len(set(watch.autocast_in_step)) == 1
    return result, "bf16-mixed" if watch.autocast_in_step[0] else "32-true", lines


def test_bf16_run_reaches_the_model_directory_and_predicts_from_a_relative_path(
    synthetic_table: Path,
    small_config: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A table on disk → train with auto on a CPU reporting native bf16 → the model directory → load from a
    relative path → predictions that reproduce the test metrics written at the end of training."""
    _native_bf16(monkeypatch, True)
    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=6)
    assert config.training.precision == "auto"
    result, precision, lines = _train_and_watch(config, tmp_path / "run")
    assert precision == "bf16-mixed"
    assert any(line.startswith("precision auto: bf16 autocast") for line in lines)
    monkeypatch.chdir(tmp_path)
    predictor = polyfuse.load(Path("run") / "model")
    frame = pd.read_csv(synthetic_table)
    test = frame[frame["split"] == "test"]
    predicted = predictor.predict(test, base_dir=synthetic_table.parent)["label"]
    accuracy = float((predicted.to_numpy() == test["label"].to_numpy()).mean())
    metrics = json.loads((result.model_dir / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test"]["label"]["accuracy"], abs=1e-6)
    assert accuracy > 0.6  # chance is ~0.38


def test_auto_keeps_fp32_for_an_objective_not_checked_in_bf16(
    synthetic_table: Path, small_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _native_bf16(monkeypatch, True)
    config = small_config(
        synthetic_table, tmp_path / "config.yaml", epochs=1, objectives=("supervised", "contrastive")
    )
    _, precision, lines = _train_and_watch(config, tmp_path / "run")
    assert precision == "32-true"
    assert any("not checked for objective(s) contrastive" in line for line in lines)
