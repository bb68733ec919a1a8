"""training.precision auto: bf16 autocast only on a CPU with native bf16 and for objectives checked in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import polyfuse
from polyfuse.config import DataConfig, EncoderConfig, ObjectiveConfig, RunConfig, TrainingConfig
from polyfuse.training.precision import resolve_precision
from polyfuse.training.run import train


def _native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def _config(accelerator: str = "auto", precision: str = "auto", **encoders: str) -> RunConfig:
    return RunConfig(
        data=DataConfig(table=Path("t.csv"), targets={"label": None}),
        encoders={m: EncoderConfig(name=name) for m, name in (encoders or {"image": "image.cnn"}).items()},
        objectives=[ObjectiveConfig(name="supervised")],
        training=TrainingConfig(accelerator=accelerator, precision=precision),
    )


@pytest.mark.parametrize(
    ("native", "accelerator", "encoders", "objective", "expected"),
    [
        (True, "cpu", {"image": "image.cnn", "audio": "audio.cnn"}, None, "bf16-mixed"),
        (True, "auto", {"image": "image.cnn"}, None, "bf16-mixed"),  # this test box has no GPU
        (False, "cpu", {"image": "image.cnn"}, None, "32"),  # emulated bf16 is slower than fp32
        (True, "cpu", {"image": "image.cnn"}, "contrastive", "32"),  # not checked in bf16
        (True, "cpu", {"image": "image.cnn", "text": "text.minilm"}, None, "32"),  # not checked in bf16
        (True, "gpu", {"image": "image.cnn"}, None, "32"),
    ],
)
def test_auto_takes_bf16_only_where_it_was_measured(
    monkeypatch: pytest.MonkeyPatch,
    native: bool,
    accelerator: str,
    encoders: dict[str, str],
    objective: str | None,
    expected: str,
) -> None:
    _native_bf16(monkeypatch, native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = _config(accelerator, **encoders)
    if objective:
        config.objectives.append(ObjectiveConfig(name=objective))
    precision, why = resolve_precision(config)
    assert precision == expected
    unchecked = [n for n in (objective, encoders.get("text")) if n]
    assert all(n in why for n in unchecked)


@pytest.mark.parametrize("given", ["32", "bf16-mixed", "16-mixed"])
def test_a_given_precision_is_kept(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    _native_bf16(monkeypatch, False)
    assert resolve_precision(_config(precision=given, text="text.minilm")) == (given, "as configured")


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
    # the image and audio columns (auto's bf16 is checked for their CNN encoders, not for text ones)
    frame = pd.read_csv(synthetic_table)[["id", "image", "audio", "label", "split"]]
    frame = frame.dropna(subset=["image", "audio"], how="all")  # rows that only had text or tabular
    for column in ("image", "audio"):
        frame[column] = [str(synthetic_table.parent / p) if isinstance(p, str) else p for p in frame[column]]
    table = tmp_path / "image_audio.csv"
    frame.to_csv(table, index=False)
    config = small_config(table, tmp_path / "config.yaml", epochs=6)
    assert config.training.precision == "auto" and set(config.encoders) == {"image", "audio"}
    result, precision, lines = _train_and_watch(config, tmp_path / "run")
    assert precision == "bf16-mixed"
    assert any(line.startswith("precision auto: bf16 autocast") for line in lines)
    monkeypatch.chdir(tmp_path)
    predictor = polyfuse.load(Path("run") / "model")
    test = frame[frame["split"] == "test"]
    predicted = predictor.predict(test)["label"]
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
    assert any(line.startswith("precision auto: fp32: bf16 is not checked for") for line in lines)
    assert any("contrastive" in line for line in lines if line.startswith("precision auto"))


def test_a_fusion_not_checked_in_bf16_keeps_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    from polyfuse.models.fusion import FUSIONS

    _native_bf16(monkeypatch, True)
    config = _config(accelerator="cpu")
    config.fusion.name = "tensor"
    assert resolve_precision(config)[0] == "bf16-mixed"
    monkeypatch.setattr(FUSIONS["tensor"], "trains_in_bf16", False)
    precision, why = resolve_precision(config)
    assert precision == "32" and "fusion tensor" in why
