"""End to end on the real AV-Digits table: a small fused model learns, and still predicts without audio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import polyfuse
from polyfuse.config import EncoderConfig
from polyfuse.data.datasets import build_av_digits, build_digit_questions, build_spoken_vs_written
from polyfuse.init_config import init_config
from polyfuse.training.run import train


@pytest.fixture(scope="module")
def av_table(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_av_digits(tmp_path_factory.mktemp("av") / "av", shared_data)


@pytest.mark.realdata
def test_init_fits_the_setup_to_redundant_and_complementary_inputs(av_table: Path, tmp_path: Path) -> None:
    notes: list[str] = []
    redundant = init_config(av_table, ["label"], tmp_path / "av.yaml", notes=notes)
    # each of image and audio names the digit: pooled fusion that tolerates a missing input
    assert redundant.fusion.name == "gated" and redundant.fusion.modality_dropout == 0.3
    assert redundant.training.aux_loss_weight == 0.5
    assert len(notes) == 1 and "redundant inputs" in notes[0] and "audio 0." in notes[0]

    for table in (build_digit_questions(av_table), build_spoken_vs_written(av_table)):
        notes = []
        complementary = init_config(table, ["answer"], tmp_path / "c.yaml", notes=notes)
        # neither input answers alone: inputs interact (FiLM), and nothing trains them to stand alone
        assert complementary.fusion.name == "film", notes
        assert complementary.fusion.modality_dropout == 0.0
        assert complementary.training.aux_loss_weight == 0.0
        assert "complementary inputs" in notes[0]
    # an explicit fusion is never second-guessed, and replaces only the fusion: the rest of the setup
    # still fits the inputs
    notes = []
    given = init_config(table, ["answer"], tmp_path / "g.yaml", fusion="gated", notes=notes)
    assert given.fusion.name == "gated" and given.fusion.modality_dropout == 0.0
    assert given.training.aux_loss_weight == 0.0 and given.training.early_stopping_patience is None
    assert given.training.epochs == complementary.training.epochs
    assert notes[0].startswith("fusion gated (given), no modality dropout"), notes
    # a vae beside the head raises the epochs once, not once per reason
    both = init_config(table, ["answer"], tmp_path / "v.yaml", objectives=["supervised", "vae"])
    assert both.training.epochs == complementary.training.epochs == 60
    notes = []
    given = init_config(av_table, ["label"], tmp_path / "t.yaml", fusion="tensor", notes=notes)
    assert given.fusion.name == "tensor" and given.fusion.modality_dropout == 0.3
    assert given.training.aux_loss_weight == 0.5 and "fusion tensor (given)" in notes[0]


@pytest.mark.realdata
def test_small_fused_model_on_av_digits(av_table: Path, tmp_path: Path) -> None:
    table = av_table
    config = init_config(table, ["label"], tmp_path / "config.yaml", fusion="gated")
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
    # The run's features went through the packed store (a few packs, not a file per cell).
    packs = list((tmp_path / "cache" / "store").glob("*.safetensors"))
    assert 0 < len(packs) <= 16 and not (tmp_path / "cache" / "features").exists()

    predictor = polyfuse.load(result.model_dir)
    frame = pd.read_csv(table)
    rows: Any = frame[frame["split"] == "test"].drop(columns=["audio"]).head(100)
    predicted = predictor.predict(rows, base_dir=table.parent)["label"].astype(int)
    # Image only (the audio column absent): still well above chance (0.1) on the image alone.
    assert (predicted.to_numpy() == rows["label"].to_numpy()).mean() > 0.6
