"""AV-Digits against an independent re-derivation of the protocol in shared/data/README.md.

The expected table is computed here with different code from the builder's (MNIST parsed by hand, image
pools as deques that rotate), so a shared misreading of the protocol is less likely to pass unnoticed.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from PIL import Image

from polyfuse.data.datasets import build_av_digits, read_idx
from polyfuse.data.datasets.avdigits import locate_sources
from polyfuse.data.errors import DataError

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


@dataclass(frozen=True)
class Expected:
    recording: str
    image_index: int
    digit: int
    speaker: str
    split: str


def _mnist(shared: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    # By hand, not read_idx: 16-byte header for images, 8 for labels.
    with gzip.open(shared / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    with gzip.open(shared / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def _derive(shared: Path, labels: npt.NDArray[np.uint8]) -> list[Expected]:
    pools: dict[tuple[bool, int], deque[int]] = {}
    for i in range(len(labels)):
        pools.setdefault((i % 5 == 0, int(labels[i])), deque()).append(i)
    names = sorted(os.listdir(shared / "fsdd" / "recordings"))
    expected = []
    for name in names:
        digit, speaker, index = name[: -len(".wav")].split("_")
        is_test = int(index) < 5
        pool = pools[(is_test, int(digit))]
        image_index = pool.popleft()
        pool.append(image_index)  # rotating the deque is the README's "wrapping round"
        expected.append(Expected(name, image_index, int(digit), speaker, "test" if is_test else "train"))
    return expected


@pytest.fixture(scope="module")
def mnist(shared_data: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    return _mnist(shared_data)


@pytest.fixture(scope="module")
def expected(shared_data: Path, mnist: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]) -> list[Expected]:
    return _derive(shared_data, mnist[1])


@pytest.fixture(scope="session")
def clean_table(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_av_digits(tmp_path_factory.mktemp("avd") / "clean", shared_data)


@pytest.fixture(scope="module")
def noisy_table(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_av_digits(tmp_path_factory.mktemp("avd") / "noisy", shared_data, variant="noisy")


def _rows(table: Path) -> list[dict[str, str]]:
    with table.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _png(table: Path, rel: str) -> npt.NDArray[np.uint8]:
    with Image.open(table.parent / rel) as im:
        assert im.mode == "L" and im.size == (28, 28)
        return np.asarray(im)


@pytest.mark.realdata
def test_columns_ids_and_split_sizes(clean_table: Path) -> None:
    with clean_table.open(encoding="utf-8") as f:
        assert f.readline().strip() == "id,image,audio,label,speaker,split"
    rows = _rows(clean_table)
    assert [int(r["id"]) for r in rows] == list(range(3000))
    assert sum(r["split"] == "train" for r in rows) == 2700
    assert sum(r["split"] == "test" for r in rows) == 300
    meta = json.loads((clean_table.parent / "av_digits.json").read_text())
    assert meta["rows"] == {"total": 3000, "train": 2700, "test": 300}
    assert meta["sources"]["mnist_images"]["sha256"].startswith("167310007f03")


@pytest.mark.realdata
def test_every_pair_matches_independent_derivation(
    clean_table: Path, expected: list[Expected], mnist: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]
) -> None:
    images, labels = mnist
    rows = _rows(clean_table)
    assert len(rows) == len(expected) == 3000
    # The real pools are large enough that the walk never wraps, so no image is used twice.
    assert len({e.image_index for e in expected}) == 3000
    for row, exp in zip(rows, expected, strict=True):
        assert row["audio"] == f"audio/{exp.recording}"
        assert (row["speaker"], row["split"]) == (exp.speaker, exp.split)
        assert int(row["label"]) == exp.digit == int(labels[exp.image_index])
        assert np.array_equal(_png(clean_table, row["image"]), images[exp.image_index]), row["id"]
    # Train rows use train-pool images only, test rows test-pool images only.
    assert all((e.image_index % 5 == 0) == (e.split == "test") for e in expected)


@pytest.mark.realdata
def test_paths_are_relative_and_audio_is_copied(clean_table: Path, shared_data: Path) -> None:
    rows = _rows(clean_table)
    for row in rows:
        for column in ("image", "audio"):
            assert not Path(row[column]).is_absolute()
            assert (clean_table.parent / row[column]).is_file()
    for row in rows[::300]:
        original = shared_data / "fsdd" / "recordings" / Path(row["audio"]).name
        assert (clean_table.parent / row["audio"]).read_bytes() == original.read_bytes()


@pytest.mark.realdata
def test_holdout_speaker_same_pairs_new_split(clean_table: Path, shared_data: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    table = build_av_digits(
        tmp_path / "theo", shared_data, holdout_speaker="theo", progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (3000, 3000) and len(calls) == 3000
    base, held = _rows(clean_table), _rows(table)
    keys = ("id", "image", "audio", "label", "speaker")
    assert [[r[k] for k in keys] for r in held] == [[r[k] for k in keys] for r in base]
    assert all((r["split"] == "test") == (r["speaker"] == "theo") for r in held)
    assert sum(r["split"] == "test" for r in held) == 500
    for b, h in zip(base[::97], held[::97], strict=True):
        assert (clean_table.parent / b["image"]).read_bytes() == (table.parent / h["image"]).read_bytes()
    assert json.loads((table.parent / "av_digits.json").read_text())["holdout_speaker"] == "theo"


@pytest.mark.realdata
def test_unknown_holdout_speaker_lists_choices(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown holdout speaker 'bob'") as info:
        build_av_digits(tmp_path / "x", shared_data, holdout_speaker="bob")
    for speaker in SPEAKERS:
        assert speaker in str(info.value)
    assert not (tmp_path / "x").exists()
    assert not any(tmp_path.iterdir())  # no temporary folder left behind


@pytest.mark.realdata
@pytest.mark.parametrize("row_id", [0, 1, 777, 2999])
def test_noisy_rows_follow_readme_formula(
    noisy_table: Path,
    expected: list[Expected],
    mnist: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]],
    shared_data: Path,
    row_id: int,
) -> None:
    row = _rows(noisy_table)[row_id]
    exp = expected[row_id]
    assert row["audio"] == f"audio/{exp.recording}" and int(row["label"]) == exp.digit

    rng = np.random.default_rng(row_id)
    x = mnist[0][exp.image_index] / 255.0
    x = np.clip(x + rng.normal(0, 0.3, (28, 28)), 0, 1)
    y0, x0 = rng.integers(0, 19, 2)
    x[y0 : y0 + 10, x0 : x0 + 10] = 0
    w, rate = sf.read(shared_data / "fsdd" / "recordings" / exp.recording)
    w = w + rng.normal(0, np.sqrt(np.mean(w**2) / 10), len(w))

    got_image = _png(noisy_table, row["image"]) / 255.0
    assert np.abs(got_image - x).max() <= 0.5 / 255 + 1e-9  # 8-bit quantisation only
    assert (got_image[y0 : y0 + 10, x0 : x0 + 10] == 0).all()
    info = sf.info(noisy_table.parent / row["audio"])
    assert (info.subtype, info.samplerate, info.channels) == ("FLOAT", 8000, 1)
    got_wave, got_rate = sf.read(noisy_table.parent / row["audio"])
    assert got_rate == rate == 8000
    np.testing.assert_allclose(got_wave, w, rtol=0, atol=1e-6)  # float32 rounding only


@pytest.mark.realdata
def test_noisy_variant_keeps_pairs(noisy_table: Path, clean_table: Path) -> None:
    keys = ("id", "image", "audio", "label", "speaker", "split")
    assert [[r[k] for k in keys] for r in _rows(noisy_table)] == [
        [r[k] for k in keys] for r in _rows(clean_table)
    ]
    assert json.loads((noisy_table.parent / "av_digits.json").read_text())["variant"] == "noisy"


def _downloaded_layout(shared: Path, root: Path) -> Path:
    """MNIST gunzipped into `root`, FSDD as a clone (its recordings a symlink to the real folder)."""
    root.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(shared / "mnist" / f"{name}.gz") as f:
            (root / name).write_bytes(f.read())
    (root / "free-spoken-digit-dataset").mkdir()
    (root / "free-spoken-digit-dataset" / "recordings").symlink_to(shared / "fsdd" / "recordings")
    return root


@pytest.mark.realdata
def test_locate_sources_layouts(shared_data: Path, tmp_path: Path) -> None:
    recordings = shared_data / "fsdd" / "recordings"
    assert locate_sources(shared_data, None, None) == (shared_data / "mnist", recordings)

    downloads = _downloaded_layout(shared_data, tmp_path / "downloads")
    clone = downloads / "free-spoken-digit-dataset"
    assert locate_sources(downloads, None, None) == (downloads, clone / "recordings")
    assert locate_sources(None, downloads, clone) == (downloads, clone / "recordings")
    assert locate_sources(None, downloads, clone / "recordings") == (downloads, clone / "recordings")


@pytest.mark.realdata
def test_build_from_downloaded_layout_matches(clean_table: Path, shared_data: Path, tmp_path: Path) -> None:
    downloads = _downloaded_layout(shared_data, tmp_path / "downloads")
    table = build_av_digits(tmp_path / "out", mnist=downloads, fsdd=downloads / "free-spoken-digit-dataset")
    assert table.read_bytes() == clean_table.read_bytes()
    for rel in ("images/00000.png", "images/01500.png", "images/02999.png"):
        assert (table.parent / rel).read_bytes() == (clean_table.parent / rel).read_bytes()


def test_locate_sources_says_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        locate_sources(tmp_path, None, None)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "t10k-images-idx3-ubyte[.gz]" in message and "{digit}_{speaker}_{index}.wav" in message
    assert str(tmp_path / "mnist") in message and str(tmp_path / "free-spoken-digit-dataset") in message


@pytest.mark.realdata
def test_refuses_to_replace_a_foreign_folder(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match=r"thesis\.tex"):
        build_av_digits(tmp_path / "out", shared_data)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def _idx_bytes(data: npt.NDArray[np.uint8]) -> bytes:
    header = bytes([0, 0, 0x08, data.ndim]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    return header + data.tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx_bytes(data)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path)
    assert got.dtype == np.uint8 and np.array_equal(got, data)
    floats = np.array([1.5, -2.0], dtype=">f4")
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + (2).to_bytes(4, "big") + floats.tobytes())
    assert read_idx(path).tolist() == [1.5, -2.0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "magic number"),
        (b"\x08\x03\x00\x00", "magic number"),
        (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00", "unknown type code 0x07"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "header"),
        (_idx_bytes(np.zeros((2, 2), np.uint8))[:-1], "needs 16"),
        (_idx_bytes(np.zeros((2, 2), np.uint8)) + b"\x00", "needs 16"),
        (gzip.compress(_idx_bytes(np.zeros((4, 4), np.uint8)))[:-6], "corrupt gzip"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_pairing_wraps_round_to_the_first_image_of_the_digit() -> None:
    # The real pools never run out, so the wrap rule is checked on a toy pool: train images of digit 1
    # are 1 and 3 (0 and 5 are test-pool images), so the third train recording of a 1 reuses image 1.
    from polyfuse.data.datasets.avdigits import _pair, _Recording

    labels = np.array([1, 1, 0, 1, 0, 1], dtype=np.uint8)
    recordings = [_Recording(f"1_a_{i}.wav", 1, "a", i) for i in (5, 6, 7, 0, 1, 2)]
    assert _pair(recordings, labels) == [1, 3, 1, 0, 5, 0]
