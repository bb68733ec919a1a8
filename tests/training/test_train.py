"""Training end to end on the synthetic table: the model directory, the Predictor, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

import polyfuse
from polyfuse.config import load_config
from polyfuse.data.errors import DataError
from polyfuse.training.run import train

CLI = [sys.executable, "-m", "polyfuse.cli"]


@pytest.fixture(scope="module")
def trained(synthetic_table: Path, tmp_path_factory: pytest.TempPathFactory, small_config: Any) -> Path:
    work = tmp_path_factory.mktemp("run")
    config = small_config(synthetic_table, work / "config.yaml", epochs=10)
    import lightning as L

    class EpochEnds(L.Callback):  # a user's own callback, passed through train(callbacks=...)
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.epochs.append(trainer.current_epoch)

    seen = EpochEnds()
    result = train(config, work / "run", show_progress=False, log=lambda *_: None, callbacks=[seen])
    assert result.model_dir == work / "run" / "model"
    assert seen.epochs == list(range(10))
    return result.model_dir


def test_model_directory_holds_no_pickle_and_reloads_offline(trained: Path, synthetic_table: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {
        "config.yaml",
        "model.safetensors",
        "preprocessing.json",
        "labels.json",
        "metrics.json",
        "polyfuse.json",
        "README.md",
        "tokenizer",
    } <= names
    assert not [p for p in trained.rglob("*") if p.suffix in {".pt", ".pth", ".pkl", ".bin", ".ckpt"}]
    assert json.loads((trained / "labels.json").read_text()) == {"label": ["class_0", "class_1", "class_2"]}
    metrics = json.loads((trained / "metrics.json").read_text())
    predictor = polyfuse.load(trained)
    # The saved model reproduces the test metrics measured at the end of training.
    frame = pd.read_csv(synthetic_table)
    test = frame[frame["split"] == "test"]
    predicted = predictor.predict(test, base_dir=synthetic_table.parent)["label"]
    accuracy = float((predicted.to_numpy() == test["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(metrics["test"]["label"]["accuracy"], abs=1e-6)
    assert accuracy > 0.6  # 3 balanced-ish classes: chance is ~0.38; every modality carries the label


def test_predictor_on_rows_with_missing_modalities(trained: Path, synthetic_table: Path) -> None:
    predictor = polyfuse.load(trained)
    base = synthetic_table.parent
    rows = [
        {
            "text": "guitar song",
            "image": str(base / "images/00001.png"),
            "audio": str(base / "audio/00001.wav"),
            "amount": 3.0,
            "colour": "green",
        },
        {"image": str(base / "images/00001.png")},  # only an image: every other key absent
        {"text": None, "image": None, "audio": (base / "audio/00001.wav").read_bytes()},
    ]
    labels = predictor.predict(rows)["label"].tolist()
    assert len(labels) == 3 and set(labels) <= {"class_0", "class_1", "class_2"}
    proba = predictor.predict_proba(rows)
    assert list(proba.columns) == ["class_0", "class_1", "class_2"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert predictor.embed(rows).shape == (3, 32)
    assert predictor.embed(rows, modality="image").shape == (3, 16)
    with pytest.raises(ValueError, match="unknown input 'video'"):
        predictor.embed(rows, modality="video")
    with pytest.raises(DataError, match=r"row 1, column 'image'.*not found"):
        predictor.predict([rows[0], {"image": str(base / "nope.png")}])


def test_loader_refuses_pickles_newer_formats_and_corrupt_weights(trained: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(trained, copy)
    (copy / "extra.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(DataError, match="pickle-based files are never loaded"):
        polyfuse.load(copy)
    (copy / "extra.pt").unlink()
    info = json.loads((copy / "polyfuse.json").read_text())
    (copy / "polyfuse.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(DataError, match="upgrade polyfuse"):
        polyfuse.load(copy)
    (copy / "polyfuse.json").write_text(json.dumps(info))
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or unreadable model weights"):
        polyfuse.load(copy)
    with pytest.raises(DataError, match="model directory not found"):
        polyfuse.load(tmp_path / "missing")


def _train_cli(config: Path, run: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [*CLI, "train", str(config), "-o", str(run), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("ema_decay", [None, 0.9], ids=["plain", "ema"])
def test_kill_9_then_resume_ends_like_an_uninterrupted_run(
    synthetic_table: Path, tmp_path: Path, small_config: Any, ema_decay: float | None
) -> None:
    config_path = tmp_path / "config.yaml"
    config = small_config(synthetic_table, config_path, epochs=6)
    # with EMA the checkpoint also carries the average and the live weights, both of which must come back
    training = config.training.model_copy(update={"ema_decay": ema_decay})
    config_path.write_text(config.model_copy(update={"training": training}).to_yaml())
    straight = _train_cli(config_path, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read() if straight.stderr else ""
    # last.ckpt is rewritten every epoch, improved or not (the final epoch's index is 5).
    import torch

    last_epoch = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert last_epoch == 5

    interrupted = _train_cli(config_path, tmp_path / "interrupted")
    last = tmp_path / "interrupted" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and interrupted.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch, possibly mid-save
    assert interrupted.poll() is None, "the run ended before it could be killed"
    os.kill(interrupted.pid, signal.SIGKILL)
    interrupted.wait()
    assert not (tmp_path / "interrupted" / "model").exists()

    resumed = _train_cli(config_path, tmp_path / "interrupted", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read() if resumed.stderr else ""
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((tmp_path / "interrupted" / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert a["training"]["epochs"] == b["training"]["epochs"]
    weights_a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "interrupted" / "model" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert np.array_equal(weights_a[key].numpy(), weights_b[key].numpy()), key


def test_ema_model_is_the_average_and_the_checkpoint_keeps_the_live_weights(
    synthetic_table: Path, tmp_path: Path, small_config: Any
) -> None:
    import torch

    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=2)
    config = config.model_copy(update={"training": config.training.model_copy(update={"ema_decay": 0.5})})
    result = train(config, tmp_path / "run", show_progress=False, log=lambda *_: None)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    average, live = best["state_dict"], best["current_model_state"]
    saved = load_file(str(result.model_dir / "model.safetensors"))
    assert saved.keys() and all(f"model.{k}" in average for k in saved)
    for key in saved:
        assert torch.equal(saved[key], average[f"model.{key}"]), key
    # the average lags the live weights: some trained weight differs between them
    moved = [
        k
        for k in saved
        if saved[k].is_floating_point() and not torch.equal(average[f"model.{k}"], live[f"model.{k}"])
    ]
    assert moved
    # BatchNorm statistics are averaged too (use_buffers), so the saved model's are the average's
    assert any("running_mean" in k for k in moved)


def test_validate_reports_every_config_error_at_once(
    synthetic_table: Path, tmp_path: Path, small_config: Any
) -> None:
    config_path = tmp_path / "config.yaml"
    small_config(synthetic_table, config_path)
    text = config_path.read_text()
    text = text.replace("name: image.cnn", "name: image.resnet9000")
    assert "  options: {}\nheads:" in text  # the fusion section's options, just before heads
    text = text.replace("  options: {}\nheads:", "  options:\n    heads: 3\nheads:")
    text = text.replace("epochs: 3", "epochs: -1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = subprocess.run([*CLI, "validate", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "training.epochs" in result.stderr and "Traceback" not in result.stderr
    # pydantic errors come first; fix that one and the registry errors all show together.
    bad.write_text(text.replace("epochs: -1", "epochs: 3"))
    result = subprocess.run([*CLI, "validate", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "unknown encoder 'image.resnet9000'" in result.stderr
    assert "fusion.options.heads" in result.stderr
    ok = subprocess.run([*CLI, "validate", str(config_path)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "is valid" in ok.stdout


def test_init_config_follows_the_data(synthetic_table: Path, tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    result = subprocess.run(
        [*CLI, "init", str(synthetic_table), "--target", "label", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = load_config(out)
    assert (
        config.data.table == synthetic_table.resolve()
        or config.data.table.resolve() == synthetic_table.resolve()
    )
    assert set(config.encoders) == {"text", "image", "audio", "numeric", "category"}
    assert config.encoders["text"].name == "text.minilm" and not config.encoders["text"].trainable
    assert config.data.split.strategy == "column"
    prep = config.data.preprocessing
    assert prep.image.size == (32, 32) and prep.image.mode == "RGB"  # the synthetic images' native size
    assert prep.audio.sample_rate == 8000
    assert (prep.audio.win_length, prep.audio.hop_length, prep.audio.n_fft) == (200, 80, 256)  # 25 / 10 ms
    # init's narrower first audio stage is written out, so the class default (older models) stays as it was
    assert config.encoders["audio"].options == {"widths": [16, 64, 128]}
    again = subprocess.run(
        [*CLI, "init", str(synthetic_table), "--target", "label", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 2 and "--force" in again.stderr


def test_predict_and_evaluate_commands(trained: Path, synthetic_table: Path, tmp_path: Path) -> None:
    from polyfuse.commands import evaluate_table, predict_table

    out = tmp_path / "predictions.csv"
    frame = predict_table(trained, synthetic_table, out, split="test")
    written = pd.read_csv(out)
    assert list(written.columns) == [
        "id",
        "label",
        "label_proba_class_0",
        "label_proba_class_1",
        "label_proba_class_2",
    ]
    assert len(written) == 48 and frame["id"].tolist() == written["id"].tolist()
    np.testing.assert_allclose(written.filter(like="_proba_").sum(axis=1), 1.0, rtol=1e-5)
    best = written.filter(like="_proba_").to_numpy().argmax(1)
    assert [f"class_{i}" for i in best] == written["label"].tolist()
    metrics = evaluate_table(trained, synthetic_table, split="test")
    saved = json.loads((trained / "metrics.json").read_text())["test"]["label"]
    assert metrics["label"]["accuracy"] == pytest.approx(saved["accuracy"])
    assert metrics["label"]["confusion_matrix"] == saved["confusion_matrix"]
    with pytest.raises(DataError, match="no rows with split 'holdout'"):
        predict_table(trained, synthetic_table, out, split="holdout")
