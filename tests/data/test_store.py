"""The packed feature store behind the cache: files are not re-read while unchanged, an edited file costs
only its own rows, a crash mid-write leaves the store whole, and readers in several processes agree."""

import multiprocessing
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from polyfuse.data import packs
from polyfuse.data.cache import FeatureCache, params_digest
from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.modalities.image import ImageConfig
from polyfuse.data.prepare import DataConfig, prepare_data
from polyfuse.data.preprocess import PreprocessingConfig
from polyfuse.data.splits import SplitConfig

KEY = params_digest({"kind": "test"})
HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def _settled(path: Path, content: bytes, age_s: int = 3600) -> Path:
    """Write `content` and date the file `age_s` back, as any file that was not just written."""
    path.write_bytes(content)
    stamp = time.time_ns() - age_s * 10**9
    os.utime(path, ns=(stamp, stamp))
    return path


class Reads:
    """Counts how often the store asks for a file's bytes."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def fetch(self, cache: FeatureCache, path: Path) -> np.ndarray:
        def read() -> bytes:
            self.paths.append(path)
            return path.read_bytes()

        return cache.fetch_source(
            path, read, KEY, lambda c: np.frombuffer(c, dtype=np.uint8).astype(np.float32)
        )


def test_unchanged_files_are_not_read_and_an_edited_one_costs_only_itself(tmp_path: Path) -> None:
    files = [_settled(tmp_path / f"{i}.bin", bytes([i]) * (10 + i)) for i in range(5)]
    reads = Reads()
    writer = FeatureCache(tmp_path / "cache")
    with writer.batch_writes():
        first = [reads.fetch(writer, f) for f in files]
    assert reads.paths == files and writer.misses == 5
    assert len(list((tmp_path / "cache" / "store").glob("*.safetensors"))) == 1  # one pass, one pack

    reads.paths.clear()
    reader = FeatureCache(tmp_path / "cache")  # another process, later
    again = [reads.fetch(reader, f) for f in files]
    assert reads.paths == [] and reader.hits == 5 and reader.misses == 0
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)

    _settled(files[2], b"edited in place", age_s=1800)  # same path, new content
    edited = FeatureCache(tmp_path / "cache")
    values = [reads.fetch(edited, f) for f in files]
    assert reads.paths == [files[2]] and edited.misses == 1 and edited.hits == 4
    np.testing.assert_array_equal(values[2], np.frombuffer(b"edited in place", dtype=np.uint8))


def test_has_source_needs_every_key_stored_and_the_file_unchanged(tmp_path: Path) -> None:
    """Validation skips a file only when every entry it would fill is stored for the file as it is now."""
    other = params_digest({"kind": "other"})
    path = _settled(tmp_path / "a.bin", b"abcd")
    with (writer := FeatureCache(tmp_path / "cache")).batch_writes():
        Reads().fetch(writer, path)
    reader = FeatureCache(tmp_path / "cache")
    assert reader.has_source(path, (KEY,))
    assert not reader.has_source(path, (KEY, other))  # one of the two entries is missing
    assert not reader.has_source(tmp_path / "never-seen.bin", (KEY,))
    _settled(path, b"abce", age_s=1800)  # same size, new content and mtime
    assert not FeatureCache(tmp_path / "cache").has_source(path, (KEY,))
    assert not FeatureCache(None).has_source(path, (KEY,))


def test_a_file_written_just_now_is_read_again_until_it_settles(tmp_path: Path) -> None:
    """Within one timestamp tick an edit can keep size and mtime: such a record is never trusted."""
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"aaaa")
    reads = Reads()
    with (cache := FeatureCache(tmp_path / "cache")).batch_writes():
        reads.fetch(cache, path)
    stat = path.stat()
    path.write_bytes(b"bbbb")  # same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same mtime
    value = reads.fetch(FeatureCache(tmp_path / "cache"), path)
    assert reads.paths == [path, path]
    np.testing.assert_array_equal(value, np.frombuffer(b"bbbb", dtype=np.uint8))


def test_a_crash_mid_write_leaves_the_store_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path)
    cache.fetch(b"kept", KEY, lambda: np.arange(3.0))
    store = tmp_path / "store"
    before = sorted(store.iterdir())

    def dies(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process is stopped between writing the data and renaming it

    monkeypatch.setattr(packs.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        cache.fetch(b"lost", KEY, lambda: np.arange(5.0))
    monkeypatch.undo()
    assert sorted(store.iterdir()) == before  # no half pack, no temporary file left behind

    # A process killed outright (no cleanup) leaves at most a temporary file, which readers ignore.
    whole = next(store.glob("*.safetensors"))
    (store / ".tmp-killed.safetensors").write_bytes(whole.read_bytes()[:30])
    reader = FeatureCache(tmp_path)
    np.testing.assert_array_equal(reader.fetch(b"kept", KEY, lambda: np.zeros(3)), np.arange(3.0))
    assert reader.fetch(b"lost", KEY, lambda: np.ones(5)).tolist() == [1.0] * 5  # recomputed, not garbage
    os.utime(store / ".tmp-killed.safetensors", ns=(HOUR_AGO_NS - 10**9, HOUR_AGO_NS - 10**9))
    reader.compact()
    assert not (store / ".tmp-killed.safetensors").exists()  # swept once it is clearly abandoned


def _write_entries(directory: str, start: int) -> None:
    cache = FeatureCache(directory)
    for i in range(start, start + 40):
        cache.fetch(str(i).encode(), KEY, lambda i=i: np.full((i % 7 + 1, 3), i, dtype=np.float32))


def test_processes_writing_at_once_share_one_store(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_entries, args=(str(tmp_path), s)) for s in (0, 20, 40)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    reader = FeatureCache(tmp_path)
    for i in range(80):
        value = reader.fetch(str(i).encode(), KEY, lambda: np.zeros(1))
        assert value.shape == (i % 7 + 1, 3) and (value == i).all()
    assert reader.misses == 0
    reader.compact()  # 120 one-entry packs → one
    assert len(list((tmp_path / "store").glob("*.safetensors"))) == 1
    assert FeatureCache(tmp_path).fetch(b"79", KEY, lambda: np.zeros(1)).shape == (3, 3)


@pytest.fixture
def image_table(tmp_path: Path) -> Path:
    (tmp_path / "media").mkdir()
    rows = []
    for i in range(24):
        path = tmp_path / "media" / f"{i}.png"
        Image.fromarray(np.full((12, 12), 10 * i, dtype=np.uint8)).save(path)
        stamp = HOUR_AGO_NS
        os.utime(path, ns=(stamp, stamp))
        rows.append({"photo": f"media/{i}.png", "label": ["a", "b"][i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    return tmp_path


def image_config(folder: Path, **kw: object) -> DataConfig:
    """A table of one image column and a label at `folder`, every row for training (8×8 grey images)."""
    return DataConfig(
        table=folder / "table.csv",
        targets={"label": "classification"},
        split=SplitConfig(strategy="random", fractions=(1.0, 0.0, 0.0)),
        preprocessing=PreprocessingConfig(image=ImageConfig(mode="L", size=(8, 8))),
        cache_dir=folder / "cache",
        **kw,  # type: ignore[arg-type]
    )


def test_an_edited_image_invalidates_only_its_row(image_table: Path) -> None:
    first = prepare_data(image_config(image_table), show_progress=False)
    assert first.preprocessor.cache.misses == 24
    Image.fromarray(np.full((12, 12), 255, dtype=np.uint8)).save(image_table / "media" / "5.png")
    os.utime(image_table / "media" / "5.png", ns=(HOUR_AGO_NS + 10**9, HOUR_AGO_NS + 10**9))
    again = prepare_data(image_config(image_table), show_progress=False)
    assert again.preprocessor.cache.misses == 1  # row 5 only
    dataset = MultimodalDataset(again.table, again.preprocessor)
    assert dataset[5]["inputs"]["photo"].max() > dataset[4]["inputs"]["photo"].max()
    assert again.preprocessor.cache.misses == 1  # the epoch reads the store, it decodes nothing


def test_a_second_validation_answers_from_the_records_alone(
    image_table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run over a table validated before neither reads its unchanged files nor views their entries; an
    edited file still goes the whole way (and is the only one that does)."""
    prepare_data(image_config(image_table), show_progress=False)
    Image.fromarray(np.full((12, 12), 255, dtype=np.uint8)).save(image_table / "media" / "7.png")
    os.utime(image_table / "media" / "7.png", ns=(HOUR_AGO_NS + 10**9, HOUR_AGO_NS + 10**9))
    fetched: list[object] = []
    fetch_source = FeatureCache.fetch_source

    def counting(self: FeatureCache, source: object, *args: object, **kwargs: object) -> np.ndarray:
        fetched.append(source)
        return fetch_source(self, source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FeatureCache, "fetch_source", counting)
    again = prepare_data(image_config(image_table), show_progress=False)
    assert fetched == [image_table / "media" / "7.png"] * len(fetched) and fetched
    assert again.preprocessor.cache.misses == 1 and again.report.rows_checked == 24
    assert again.preprocessor.cache.hits == 23  # the unchanged files' entries count as found


def test_dataloader_workers_read_the_store_concurrently(image_table: Path) -> None:
    prepared = prepare_data(image_config(image_table), show_progress=False)
    dataset = MultimodalDataset(prepared.table, prepared.preprocessor)
    collate = make_collate(prepared.preprocessor)
    alone = [b.inputs["photo"].values for b in DataLoader(dataset, batch_size=5, collate_fn=collate)]
    packs_before = sorted((image_table / "cache" / "store").iterdir())
    loader = DataLoader(dataset, batch_size=5, collate_fn=collate, num_workers=2)
    together = [b.inputs["photo"].values for b in loader]
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b)
    assert sorted((image_table / "cache" / "store").iterdir()) == packs_before  # nothing was recomputed


def test_a_pickled_store_reopens_its_maps(tmp_path: Path) -> None:
    """What a spawned DataLoader worker gets: the folder, not the parent's memory maps."""
    cache = FeatureCache(tmp_path)
    cache.fetch(b"x", KEY, lambda: np.arange(6, dtype=np.int64).reshape(2, 3))
    copy = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(copy.get(FeatureCache.key(b"x", KEY)), np.arange(6).reshape(2, 3))
    assert copy.get(FeatureCache.key(b"y", KEY)) is None
