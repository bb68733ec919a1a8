"""The whole data layer on small tables: validation names every bad cell; batches carry presence masks."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from polyfuse.data.dataset import AUDIO_PAD_MULTIPLE, Collate, MultimodalDataset, make_collate
from polyfuse.data.errors import DataError
from polyfuse.data.modalities.audio import AudioConfig
from polyfuse.data.modalities.image import ImageConfig
from polyfuse.data.prepare import DataConfig, prepare_data
from polyfuse.data.preprocess import PreprocessingConfig, Preprocessor
from polyfuse.data.schema import Modality
from polyfuse.data.splits import SplitConfig
from polyfuse.data.table import read_table

PREP = PreprocessingConfig(
    image=ImageConfig(mode="L", size=(16, 16)),
    audio=AudioConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=20),
)


def _png(path: Path, value: int) -> None:
    Image.fromarray(np.full((20, 20), value, dtype=np.uint8)).save(path)


def _wav(path: Path, seconds: float, sample_rate: int = 8000, channels: int = 1) -> None:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([wave] * channels, axis=1) if channels > 1 else wave, sample_rate)


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    """16 good rows: image + audio + text + numeric + category, a few cells missing on purpose."""
    (tmp_path / "media").mkdir()
    rows = []
    for i in range(16):
        _png(tmp_path / "media" / f"{i}.png", 15 * i)
        _wav(tmp_path / "media" / f"{i}.wav", 0.2 + 0.05 * i)
        rows.append(
            {
                "id": i,
                "photo": f"media/{i}.png" if i != 3 else "",
                "voice": f"media/{i}.wav" if i != 4 else "",
                "note": f"sample number {i} is {'odd' if i % 2 else 'even'}" if i != 5 else "",
                "size": float(i) if i != 6 else None,
                "colour": ["red", "blue"][i % 2],
                "label": ["a", "b"][i % 2],
                "split": "test" if i >= 14 else "train",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    return tmp_path


def _config(path: Path, cache: Path, **kw: object) -> DataConfig:
    return DataConfig(
        table=path,
        targets={"label": None},
        columns={"note": "text"},
        split=SplitConfig(strategy="column", val_fraction_of_train=0.0),
        preprocessing=PREP,
        cache_dir=cache,
        **kw,  # type: ignore[arg-type]
    )


def test_batch_carries_presence_masks_and_padding(table_dir: Path, tmp_path: Path) -> None:
    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    assert sorted(prepared.preprocessor.inputs) == ["category", "note", "numeric", "photo", "voice"]
    train = prepared.split("train")
    dataset = MultimodalDataset(train, prepared.preprocessor)
    batch = make_collate(prepared.preprocessor)([dataset[i] for i in range(8)])
    assert batch.inputs["photo"].values.shape == (8, 1, 16, 16)
    assert batch.inputs["photo"].present.tolist() == [True, True, True, False, True, True, True, True]
    assert batch.inputs["voice"].present[4].item() is False
    assert batch.inputs["note"].present[5].item() is False
    # A missing image is carried as a mask over zeros, never another row's pixels.
    assert torch.count_nonzero(batch.inputs["photo"].values[3]) == 0
    audio = batch.inputs["voice"]
    assert audio.token_mask is not None
    lengths = audio.token_mask.sum(1)
    assert lengths[7] > lengths[0] > 0  # longer clips, more frames
    # time padded to the next multiple of 16 frames past the longest clip, and no further
    assert audio.values.shape[2] % AUDIO_PAD_MULTIPLE == 0
    assert audio.values.shape[2] - AUDIO_PAD_MULTIPLE < int(lengths.max()) <= audio.values.shape[2]
    assert torch.count_nonzero(audio.values[0, :, lengths[0] :]) == 0  # padding is zeros
    text = batch.inputs["note"]
    assert text.token_mask is not None and text.token_mask[5].sum() == 0
    numeric = batch.inputs["numeric"]
    assert numeric.token_mask is not None and numeric.token_mask[:, 0].tolist()[6] is False
    assert batch.targets["label"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    # standardisation statistics come from the training rows only (ids 0..13, id 6 missing)
    stats = prepared.preprocessor.state.numeric["size"]
    assert stats.mean == pytest.approx(np.mean([i for i in range(14) if i != 6]))


def test_every_bad_input_named_by_row_column_and_file(table_dir: Path, tmp_path: Path) -> None:
    media = table_dir / "media"
    (media / "truncated.png").write_bytes((media / "0.png").read_bytes()[:40])
    (media / "notimage.png").write_bytes(b"this is not an image at all")
    sf.write(media / "empty.wav", np.zeros(0), 8000)
    _wav(media / "stereo9.wav", 0.1, channels=9)
    frame = pd.read_csv(table_dir / "table.csv", keep_default_na=False, na_values=[""])
    bad = {
        0: {"photo": "media/missing.png"},
        1: {"photo": "media/truncated.png"},
        2: {"photo": "media/notimage.png"},
        3: {"voice": "media/empty.wav"},
        4: {"voice": "media/stereo9.wav"},
        5: {"note": "   "},
        6: {"size": "twelve"},
        7: {"label": None},
        8: {"id": 0},  # duplicate id
    }
    for row, cells in bad.items():
        for column, value in cells.items():
            frame[column] = frame[column].astype(object)
            frame.at[row, column] = value
    frame.at[15, "label"] = "zebra"  # a test label never seen in training
    frame.to_csv(table_dir / "bad.csv", index=False)
    with pytest.raises(DataError) as info:
        prepare_data(_config(table_dir / "bad.csv", tmp_path / "cache"), show_progress=False)
    problems = info.value.problems
    where = {(p.row, p.column) for p in problems}
    assert where == {
        (0, "photo"),
        (1, "photo"),
        (2, "photo"),
        (3, "voice"),
        (4, "voice"),
        (5, "note"),
        (6, "size"),
        (7, "label"),
        (8, "id"),
        (15, "label"),
    }
    text = str(info.value)
    assert "row 0, column 'photo', file 'media/missing.png': file not found" in text
    assert "zero-length" in text and "channels" in text and "'twelve' is not a number" in text
    assert "duplicate id '0'" in text and "label 'zebra' was not seen in training" in text
    assert all(p.fix for p in problems), [str(p) for p in problems if not p.fix]

    # --drop-invalid drops exactly those rows and says how many.
    prepared = prepare_data(
        _config(table_dir / "bad.csv", tmp_path / "cache", drop_invalid=True), show_progress=False
    )
    assert prepared.dropped_rows == [0, 1, 2, 3, 4, 5, 6, 7, 8, 15]
    assert len(prepared.table) == 6


def test_cache_survives_model_settings_but_not_preprocessing_changes(table_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = prepare_data(_config(table_dir / "table.csv", cache), show_progress=False)
    assert first.preprocessor.cache.misses > 0 and first.preprocessor.cache.hits == 0
    # Changing a training setting (here: the split seed, which does not touch preprocessing) → all hits.
    config = _config(table_dir / "table.csv", cache)
    again = prepare_data(
        config.model_copy(update={"split": config.split.model_copy(update={"seed": 7})}), show_progress=False
    )
    assert again.preprocessor.cache.misses == 0 and again.preprocessor.cache.hits > 0
    # Changing an image parameter → the images miss, the audio still hits.
    prep = PREP.model_copy(update={"image": ImageConfig(mode="L", size=(12, 12))})
    changed = prepare_data(config.model_copy(update={"preprocessing": prep}), show_progress=False)
    assert changed.preprocessor.cache.misses == 15  # the 15 images present miss; the audio clips hit
    # Editing a file in place → that file misses.
    _png(table_dir / "media" / "0.png", 255)
    edited = prepare_data(config, show_progress=False)
    assert edited.preprocessor.cache.misses == 1


def test_augmentation_is_deterministic_per_seed_epoch_row(table_dir: Path, tmp_path: Path) -> None:
    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    train = prepared.split("train")
    a = MultimodalDataset(train, prepared.preprocessor, augment=True, seed=1)
    b = MultimodalDataset(train, prepared.preprocessor, augment=True, seed=1)
    torch.testing.assert_close(a[1]["inputs"]["photo"], b[1]["inputs"]["photo"])
    before = a[1]["inputs"]["voice"]
    a.set_epoch(1)
    assert not torch.equal(before, a[1]["inputs"]["voice"])
    plain = MultimodalDataset(train, prepared.preprocessor)
    assert not torch.equal(plain[1]["inputs"]["voice"], before)


def test_rows_from_python_with_bytes_and_base64(table_dir: Path, tmp_path: Path) -> None:
    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    png = (table_dir / "media" / "2.png").read_bytes()
    wav = (table_dir / "media" / "2.wav").read_bytes()
    rows = [
        {
            "photo": png,
            "voice": base64.b64encode(wav).decode(),
            "note": "hello",
            "size": 1.0,
            "colour": "red",
        },
        {"photo": None, "voice": str(table_dir / "media" / "2.wav")},  # keys may be absent
    ]
    table = read_table(rows)
    dataset = MultimodalDataset(table, prepared.preprocessor, with_targets=False)
    from_bytes, from_path_row = dataset[0]["inputs"], dataset[1]["inputs"]
    on_disk = MultimodalDataset(prepared.table, prepared.preprocessor)[2]["inputs"]
    torch.testing.assert_close(from_bytes["photo"], on_disk["photo"])
    torch.testing.assert_close(from_bytes["voice"], on_disk["voice"])
    torch.testing.assert_close(from_path_row["voice"], on_disk["voice"])
    assert from_path_row["photo"] is None and from_path_row["note"] is None


def test_preprocessor_round_trips_through_json(table_dir: Path, tmp_path: Path) -> None:
    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    text = prepared.preprocessor.to_json()
    restored = Preprocessor.from_json(text)
    assert restored.state.model_dump() == prepared.preprocessor.state.model_dump()
    row = prepared.table.frame.iloc[0].to_dict()
    a = prepared.preprocessor.encode_inputs(row, prepared.table.base_dir)
    b = restored.encode_inputs(row, prepared.table.base_dir)
    for name in a:
        if a[name] is not None:
            torch.testing.assert_close(a[name], b[name])
    with pytest.raises(DataError, match="version"):
        Preprocessor.from_json(text.replace('"version": 1', '"version": 99'))


def test_cli_reports_problems_without_a_traceback(table_dir: Path, tmp_path: Path) -> None:
    (table_dir / "media" / "1.png").write_bytes(b"garbage")
    env = {**os.environ, "POLYFUSE_CACHE_DIR": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "polyfuse.cli"]
    result = subprocess.run(
        [*cli, "data", "inspect", str(table_dir / "table.csv"), "-c", "note=text"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stderr  # problems found: documented exit status 1
    assert "1 problem(s)" in result.stdout and "row 1, column 'photo'" in result.stdout
    assert "class balance of 'label'" in result.stdout
    result = subprocess.run(
        [*cli, "data", "inspect", str(table_dir / "nope.csv")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "table file not found" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_worker_processes_give_the_same_batches(table_dir: Path, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    dataset = MultimodalDataset(prepared.split("train"), prepared.preprocessor, augment=True, seed=3)
    collate = make_collate(prepared.preprocessor)
    serial = list(DataLoader(dataset, batch_size=4, collate_fn=collate))
    parallel = list(DataLoader(dataset, batch_size=4, collate_fn=collate, num_workers=2))
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel, strict=True):
        for name in a.inputs:
            torch.testing.assert_close(a.inputs[name].values, b.inputs[name].values)
            assert torch.equal(a.inputs[name].present, b.inputs[name].present)


def test_a_batch_is_read_on_one_thread_with_the_same_samples(
    table_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DataLoader reads a batch through __getitems__, on one intra-op thread (small per-row ops pay
    more for the threads' start and join than they gain), with the augmentation of its images and clips
    applied to the whole batch, and gets bitwise the rows __getitem__ gives."""
    from torch.utils.data import DataLoader

    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    dataset = MultimodalDataset(prepared.split("train"), prepared.preprocessor, augment=True, seed=3)
    seen: list[int] = []
    deferred: list[str] = []
    read = dataset.preprocessor.encode_inputs
    finish = dataset.preprocessor.apply_deferred

    def encode_inputs(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return read(*args, **kwargs)  # type: ignore[arg-type]

    def apply_deferred(samples: list[dict[str, object]]) -> None:
        deferred.extend(
            type(v).__name__ for s in samples for v in s.values() if type(v).__name__.startswith("Deferred")
        )
        finish(samples)

    monkeypatch.setattr(dataset.preprocessor, "encode_inputs", encode_inputs)
    monkeypatch.setattr(dataset.preprocessor, "apply_deferred", apply_deferred)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=make_collate(prepared.preprocessor))))
        assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2  # restored after the batch
        # the augmentation of every present image and clip was applied to the batch at once
        assert sorted(deferred) == ["DeferredAudio"] * 4 + ["DeferredImage"] * 3  # row 3 has no image
        with pytest.raises(IndexError):  # restored after an error too
            dataset.__getitems__([10_000_000])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(torch_threads)
    one_by_one = make_collate(prepared.preprocessor)([dataset[i] for i in range(4)])
    for name in batch.inputs:
        assert torch.equal(batch.inputs[name].values, one_by_one.inputs[name].values)


def test_unaugmented_and_mixed_batches_read_as_row_by_row(table_dir: Path, tmp_path: Path) -> None:
    """Images of a batch are normalised together (and only the drawn ones warped): bitwise what each row
    read alone gives, for a dataset without augmentation and for a batch mixing drawn and undrawn rows."""
    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    plain = MultimodalDataset(prepared.split("train"), prepared.preprocessor)
    augmented = MultimodalDataset(prepared.split("train"), prepared.preprocessor, augment=True, seed=5)
    collate = make_collate(prepared.preprocessor)
    rows = [0, 1, 2, 4, 5, 6]  # row 3 has no image
    assert torch.equal(
        collate(plain.__getitems__(rows)).inputs["photo"].values,
        collate([plain[i] for i in rows]).inputs["photo"].values,
    )
    mixed = [(augmented if i % 2 else plain)._item(i, defer_augmentation=True)["inputs"] for i in rows]
    drawn = [type(m["photo"]).__name__ == "DeferredImage" and m["photo"].draw is not None for m in mixed]
    assert drawn == [False, True, False, False, True, False]
    prepared.preprocessor.apply_deferred(mixed)
    for k, i in enumerate(rows):
        alone = (augmented if i % 2 else plain)[i]["inputs"]["photo"]
        assert torch.equal(mixed[k]["photo"], alone)
    assert not torch.equal(mixed[1]["photo"], plain[1]["inputs"]["photo"])  # the warp was applied


def test_default_split_follows_the_tables_split_column(table_dir: Path, tmp_path: Path) -> None:
    config = DataConfig(
        table=table_dir / "table.csv",
        targets={"label": None},
        columns={"note": "text"},
        preprocessing=PREP,
        cache_dir=tmp_path / "cache",
    )
    prepared = prepare_data(config, show_progress=False)
    frame = pd.read_csv(table_dir / "table.csv")
    assert (prepared.splits[frame["split"] == "test"] == "test").all()
    assert set(prepared.splits[frame["split"] == "train"]) <= {"train", "val"}


def test_media_paths_off_makes_strings_data_never_files(table_dir: Path, tmp_path: Path) -> None:
    """What a server relies on: with media_paths=False a cell naming a real file is refused, not read."""
    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    real = str(table_dir / "media" / "0.png")
    encoded = base64.b64encode((table_dir / "media" / "0.png").read_bytes()).decode()
    local = read_table([{"photo": real}])
    served = read_table([{"photo": real}])
    served.media_paths = False
    assert (
        MultimodalDataset(local, prepared.preprocessor, with_targets=False)[0]["inputs"]["photo"] is not None
    )
    with pytest.raises(DataError, match="file paths are not accepted here") as info:
        MultimodalDataset(served, prepared.preprocessor, with_targets=False)[0]
    assert info.value.problems[0].file is not None  # the cell is named, but never opened:
    assert "No such file" not in str(info.value) and "not found" not in str(info.value)
    # the same picture as base64 is accepted, and gives the same tensor as the file
    as_data = read_table([{"photo": encoded}])
    as_data.media_paths = False
    from_data = MultimodalDataset(as_data, prepared.preprocessor, with_targets=False)[0]["inputs"]["photo"]
    from_file = MultimodalDataset(local, prepared.preprocessor, with_targets=False)[0]["inputs"]["photo"]
    assert torch.equal(from_data, from_file)


@pytest.mark.parametrize(
    "value", ["/etc/passwd", "~/.ssh/id_rsa", "../../x.wav", "file:///etc/passwd", "http://169.254.169.254/"]
)
def test_resolve_media_without_paths_refuses_names_and_urls(value: str) -> None:
    from polyfuse.data.errors import MediaError
    from polyfuse.data.media import resolve_media

    with pytest.raises(MediaError) as info:
        resolve_media(value, Path("/"), allow_paths=False)
    if "://" not in value:  # URLs are named as URLs; a file name is never echoed (nor said to exist)
        assert value not in info.value.message and "base64" in info.value.message
    with pytest.raises(MediaError):
        resolve_media(Path(value), None, allow_paths=False)
    assert resolve_media(base64.b64encode(b"RIFF1234").decode(), None, allow_paths=False) == b"RIFF1234"


def test_audio_padding_rounds_own_features_but_not_a_pretrained_encoders() -> None:
    # Whisper accepts only its own number of frames (e.g. 80 x 3000): an input read by a pretrained encoder
    # is padded to its longest row and no further; polyfuse's log-mel to a multiple of AUDIO_PAD_MULTIPLE.
    collate = Collate(
        {"own": Modality.AUDIO, "whisper": Modality.AUDIO},
        {"own": 40, "whisper": 80},
        {},
        exact_length=frozenset({"whisper"}),
    )
    samples = [
        {"inputs": {"own": torch.ones(40, 30), "whisper": torch.ones(80, 100)}, "targets": {}, "index": 0},
        {"inputs": {"own": torch.ones(40, 17), "whisper": None}, "targets": {}, "index": 1},
    ]
    batch = collate(samples)
    assert batch.inputs["whisper"].values.shape == (2, 80, 100)
    assert batch.inputs["own"].values.shape == (2, 40, 32)
    own_mask = batch.inputs["own"].token_mask
    assert own_mask is not None and own_mask.sum(1).tolist() == [30, 17]


def test_rows_are_made_into_dicts_once_per_table(table_dir: Path, tmp_path: Path) -> None:
    """Validation and the datasets read the same row dicts (pandas' to_dict costs ~20 ms per 3,000 rows);
    a subset takes its rows from its table's."""
    prepared = prepare_data(_config(table_dir / "table.csv", tmp_path / "cache"), show_progress=False)
    table = prepared.table
    records = table.records()
    assert records is table.records()
    assert str(records) == str(
        [{str(k): v for k, v in r.items()} for r in table.frame.to_dict("records")]
    )  # NaN != NaN
    train = prepared.split("train")
    rows = MultimodalDataset(train, prepared.preprocessor).rows
    positions = list(prepared.splits.index[prepared.splits == "train"])
    assert len(rows) == len(positions) and all(
        row is records[i] for row, i in zip(rows, positions, strict=True)
    )
    assert [r["id"] for r in rows] == train.frame["id"].tolist()
