"""Every Hugging Face family end to end, as a user runs it: a table of image / audio files or texts on disk →
`polyfuse train` → model directory → `polyfuse.load` from a RELATIVE path → the same predictions as the
trained model made before it was saved. Each backbone is a tiny random model saved with its own processor
(tests/tiny_hf.py); the preprocessing each input gets must be that processor's, not polyfuse's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import tiny_hf
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import polyfuse
from polyfuse.cli import app
from polyfuse.config import EncoderConfig
from polyfuse.data.modalities.pretrained import load_processor
from polyfuse.data.prepare import prepare_data
from polyfuse.models.model import pretrained_inputs

ROWS = 16
MODALITY = {
    **{f: "text" for f in tiny_hf.TEXT_FAMILIES},
    **{f: "image" for f in tiny_hf.IMAGE_FAMILIES},
    **{f: "audio" for f in tiny_hf.AUDIO_FAMILIES},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    return tiny_hf.build_all(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One table per modality: a label and a column of texts, of image files (40x56 RGB, not square, so
    resizing and cropping matter) or of WAV files (8 kHz, so the extractor's 16 kHz means resampling)."""
    root = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(0)
    (root / "media").mkdir()
    columns: dict[str, list[Any]] = {"text": [], "image": [], "audio": [], "label": []}
    for i in range(ROWS):
        label = i % 2
        columns["label"].append(["low", "high"][label])
        columns["text"].append(f"the item was {'great' if label else 'poor'} and {tiny_hf.WORDS[i % 12]}")
        pixels = rng.integers(0, 80, (40, 56, 3)) + 150 * label
        Image.fromarray(pixels.astype(np.uint8)).save(root / "media" / f"{i}.png")
        columns["image"].append(f"media/{i}.png")
        seconds = np.arange(int(0.4 * 8000)) / 8000
        wave = 0.3 * np.sin(2 * np.pi * (300 + 500 * label) * seconds) + 0.01 * rng.normal(size=seconds.size)
        sf.write(root / "media" / f"{i}.wav", wave.astype(np.float32), 8000)
        columns["audio"].append(f"media/{i}.wav")
    frame = pd.DataFrame(columns)
    paths = {}
    for modality in ("text", "image", "audio"):
        paths[modality] = root / f"{modality}.csv"
        frame[[modality, "label"]].to_csv(paths[modality], index=False)
    return paths


def write_config(table: Path, folder: Path, modality: str, backbone: Path, small_config: Any) -> Path:
    config = small_config(table, folder / "config.yaml", epochs=1)
    encoders = {modality: EncoderConfig(name=f"{modality}.hf", options={"name_or_path": str(backbone)})}
    data = config.data.model_copy(update={"use_cache": False})
    training = config.training.model_copy(update={"batch_size": 8})
    config = config.model_copy(update={"encoders": encoders, "data": data, "training": training})
    path = folder / "config.yaml"
    path.write_text(config.to_yaml())
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", list(MODALITY))
def test_family_trains_from_a_table_and_loads_from_a_relative_path(
    family: str,
    backbones: dict[str, Path],
    tables: dict[str, Path],
    small_config: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    modality = MODALITY[family]
    config_path = write_config(tables[modality], tmp_path, modality, backbones[family], small_config)
    result = CliRunner().invoke(
        app, ["train", str(config_path), "--output", str(tmp_path / "runs" / "x"), "-q"]
    )
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "runs" / "x" / "model"
    saved = model_dir / "backbones" / modality
    assert (saved / "config.json").exists()
    # the backbone's own processor travels with it, and the preprocessing points there
    assert (saved / ("tokenizer_config.json" if modality == "text" else "preprocessor_config.json")).exists()
    state = json.loads((model_dir / "preprocessing.json").read_text())
    assert state["pretrained"][modality]["source"] == f"backbones/{modality}"

    rows = pd.read_csv(tables[modality])
    trained = polyfuse.load(model_dir).predict_proba(rows, base_dir=tables[modality].parent)
    monkeypatch.chdir(tmp_path)
    loaded = polyfuse.load("runs/x/model")  # a relative path, as a user types it
    after = loaded.predict_proba(rows, base_dir=tables[modality].parent)
    np.testing.assert_allclose(trained.to_numpy(), after.to_numpy(), rtol=1e-5, atol=1e-6)


def _prepared(
    modality: str,
    family: str,
    tables: dict[str, Path],
    backbones: dict[str, Path],
    small_config: Any,
    tmp_path: Path,
) -> Any:
    config = yaml.safe_load(
        write_config(tables[modality], tmp_path, modality, backbones[family], small_config).read_text()
    )
    from polyfuse.config import parse_config

    run = parse_config(config, "config.yaml")
    return prepare_data(
        run.data, show_progress=False, pretrained=lambda inputs: pretrained_inputs(run, inputs)
    )


def encoded_row(
    modality: str, family: str, row: int, fixtures: tuple[Any, ...]
) -> tuple[Any, dict[str, Any], Any]:
    """(prepared data, the table's row `row`, that row's tensor for the input) with `family`'s backbone."""
    tables = fixtures[0]
    prepared = _prepared(modality, family, *fixtures)
    cells = prepared.table.frame.iloc[row].to_dict()
    return prepared, cells, prepared.preprocessor.encode_inputs(cells, tables[modality].parent)[modality]


@pytest.mark.parametrize("family", ["vit", "clip_vision", "convnext"])
def test_image_input_gets_the_backbones_image_processor(
    family: str, backbones: dict[str, Path], tables: dict[str, Path], small_config: Any, tmp_path: Path
) -> None:
    """Not polyfuse's 64x64 / mean 0.5 images: the processor's size, crop, mean and std."""
    _, row, x = encoded_row("image", family, 0, (tables, backbones, small_config, tmp_path))
    processor = load_processor(str(backbones[family]), "image")
    pixels = np.array(Image.open(tables["image"].parent / row["image"]).convert("RGB"))
    expected = processor(images=pixels, return_tensors="np")["pixel_values"][0]  # (3, 32, 32)
    assert tuple(x.shape) == (3, 32, 32)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("family", tiny_hf.AUDIO_FAMILIES)
def test_audio_input_gets_the_backbones_feature_extractor(
    family: str, backbones: dict[str, Path], tables: dict[str, Path], small_config: Any, tmp_path: Path
) -> None:
    """The waveform at the extractor's rate (wav2vec2 / HuBERT), Whisper's log-mel of its whole window,
    AST's fbank: what the extractor makes of the file resampled to its rate, in the (F, T) layout."""
    prepared, row, x = encoded_row("audio", family, 1, (tables, backbones, small_config, tmp_path))
    extractor = load_processor(str(backbones[family]), prepared.preprocessor.state.pretrained["audio"].family)
    wave, rate = sf.read(tables["audio"].parent / row["audio"], dtype="float32")
    assert rate == 8000 and extractor.sampling_rate == 16000
    from scipy.signal import resample_poly

    wave16 = resample_poly(wave, 2, 1).astype(np.float32)
    out = extractor(wave16, sampling_rate=16000, return_tensors="np")
    if family in ("wav2vec2", "hubert"):
        expected = out["input_values"]  # (1, N): 0.4 s at 16 kHz
        assert tuple(x.shape) == (1, 6400)
    elif family == "whisper":
        expected = out["input_features"][0]  # (80, 100): the whole (here 1 s) window
        assert tuple(x.shape) == (80, 100)
    else:
        expected = out["input_values"][0].T  # (16 mels, 32 frames)
        assert tuple(x.shape) == (16, 32)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("family", tiny_hf.TEXT_FAMILIES)
def test_text_input_gets_the_backbones_own_tokenizer(
    family: str, backbones: dict[str, Path], tables: dict[str, Path], small_config: Any, tmp_path: Path
) -> None:
    """Not the packaged MiniLM tokenizer (preprocessing.text.tokenizer): ids the backbone's embeddings know."""
    prepared, row, ids = encoded_row("text", family, 0, (tables, backbones, small_config, tmp_path))
    tokenizer = load_processor(str(backbones[family]), "text")
    assert ids.tolist() == tokenizer(row["text"])["input_ids"]
    assert int(ids.max()) < len(tokenizer)
    assert prepared.preprocessor.padding_values()["text"] == tokenizer.pad_token_id
