"""The synthetic table: deterministic, complete where it should be, and learnable from its modalities."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from polyfuse.data.datasets import make_synthetic_table
from polyfuse.data.datasets.synthetic import COLUMNS, INPUTS, tone_frequency


def _rows(table: Path) -> list[dict[str, str]]:
    with table.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_table(tmp_path_factory.mktemp("syn") / "a")


def test_shape_columns_and_files(table: Path) -> None:
    with table.open(encoding="utf-8") as f:
        assert f.readline().strip() == ",".join(COLUMNS)
    rows = _rows(table)
    assert len(rows) == 300 and [int(r["id"]) for r in rows] == list(range(300))
    assert sum(r["split"] == "test" for r in rows) == 60
    assert {r["label"] for r in rows} == {"class_0", "class_1", "class_2"}
    for r in rows:
        if r["image"]:
            assert not Path(r["image"]).is_absolute()
            with Image.open(table.parent / r["image"]) as im:
                assert (im.mode, im.size) == ("RGB", (32, 32))
        if r["audio"]:
            assert not Path(r["audio"]).is_absolute()
            info = sf.info(table.parent / r["audio"])
            assert (info.samplerate, info.channels, info.frames) == (8000, 1, 2000)
        if r["amount"]:
            assert float(r["amount"]) > 0


def test_deterministic_by_seed(table: Path, tmp_path: Path) -> None:
    again = make_synthetic_table(tmp_path / "b")
    assert again.read_bytes() == table.read_bytes()
    media = [r[c] for r in _rows(table) for c in ("image", "audio") if r[c]]
    for rel in media[:3] + media[-3:]:
        assert (again.parent / rel).read_bytes() == (table.parent / rel).read_bytes()
    other = make_synthetic_table(tmp_path / "c", seed=1)
    assert other.read_bytes() != table.read_bytes()


def test_missing_cells_but_no_empty_row(table: Path, tmp_path: Path) -> None:
    rows = _rows(table)
    for column in INPUTS:
        assert 5 <= sum(r[column] == "" for r in rows) <= 70, column  # ~10% of 300
    assert all(any(r[c] for c in INPUTS) for r in rows)
    assert all(r["label"] and r["split"] for r in rows)
    # Media files exist exactly for the cells that name them.
    assert len(list((table.parent / "images").iterdir())) == sum(bool(r["image"]) for r in rows)

    dense = _rows(make_synthetic_table(tmp_path / "dense", n_rows=100, missing_rate=0.95))
    assert all(any(r[c] for c in INPUTS) for r in dense)


def test_label_recoverable_from_audio_and_image(table: Path) -> None:
    rows = _rows(table)
    freqs = np.array([tone_frequency(k, 3) for k in range(3)])
    audio_rows = [r for r in rows if r["audio"]]
    for r in audio_rows:
        wave, rate = sf.read(table.parent / r["audio"])
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]
        assert f"class_{np.abs(freqs - peak).argmin()}" == r["label"], r["id"]

    # Image: the class colour's hue (k / 3 of the way round) dominates the brightest pixel.
    image_rows = [r for r in rows if r["image"]]
    hits = 0
    for r in image_rows:
        with Image.open(table.parent / r["image"]) as im:
            pixels = np.asarray(im.convert("HSV"), dtype=np.float64)
        hue = pixels[..., 0][np.unravel_index(pixels[..., 2].argmax(), pixels.shape[:2])] / 256
        hits += round(hue * 3) % 3 == int(r["label"].removeprefix("class_"))
    assert hits / len(image_rows) > 0.95


def test_text_keywords_point_to_the_class(table: Path) -> None:
    keywords = {"river": 0, "boat": 0, "fish": 0, "engine": 1, "wheel": 1, "road": 1}
    keywords |= {"guitar": 2, "song": 2, "drum": 2}
    rows = [r for r in _rows(table) if r["text"]]
    hits = 0
    for r in rows:
        votes = np.bincount([keywords[w] for w in r["text"].split() if w in keywords], minlength=3)
        hits += f"class_{votes.argmax()}" == r["label"]
    assert hits / len(rows) > 0.8


@pytest.mark.parametrize(
    "kwargs",
    [{"n_rows": 0}, {"n_classes": 1}, {"n_classes": 21}, {"missing_rate": 1.0}, {"missing_rate": -0.1}],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_synthetic_table(tmp_path, **kwargs)
