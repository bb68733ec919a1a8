"""The first pass decodes on worker processes; a file whose decoder never returns, or kills its process,
becomes that row's problem instead of a hung or crashed run."""

import faulthandler
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_store import image_config

from polyfuse.data import preprocess
from polyfuse.data.errors import DataError
from polyfuse.data.prepare import DataConfig, prepare_data

HANGS, CRASHES = 7, 11  # rows whose files make the decoder below hang / die


@pytest.fixture
def hostile_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "media").mkdir()
    for i in range(16):
        Image.fromarray(np.full((10, 10), 12 * i, dtype=np.uint8)).save(tmp_path / "media" / f"{i}.png")
    (tmp_path / "media" / f"{HANGS}.png").write_bytes(b"HANG" + bytes(100))
    (tmp_path / "media" / f"{CRASHES}.png").write_bytes(b"CRASH" + bytes(100))
    rows = [{"photo": f"media/{i}.png", "label": ["a", "b"][i % 2]} for i in range(16)]
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    real_decode = preprocess.decode_image

    def hostile_decode(content: bytes, *args: object, **kwargs: object) -> np.ndarray:
        if content.startswith(b"HANG"):
            while True:  # a C decoder stuck in a loop: no exception, no return
                time.sleep(3600)
        if content.startswith(b"CRASH"):
            faulthandler.disable()  # the worker inherits pytest's handler, whose dump would clutter the log
            os.kill(os.getpid(), signal.SIGSEGV)  # a decoder that segfaults
        return real_decode(content, *args, **kwargs)  # type: ignore[arg-type]

    # The workers are forked from this process, so they decode with the patched function.
    monkeypatch.setattr(preprocess, "decode_image", hostile_decode)
    return tmp_path


def _config(folder: Path, **kw: object) -> DataConfig:
    return image_config(folder, **{"workers": 2, "decode_timeout_s": 1.0, **kw})


def test_a_hanging_decoder_is_stopped_and_reported_as_its_row(hostile_table: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        prepare_data(_config(hostile_table), show_progress=False)
    assert time.monotonic() - start < 30  # cut off, not waited for (the limit is 1 s)
    problems = {p.row: p for p in info.value.problems}
    assert sorted(problems) == [HANGS, CRASHES]  # every other row was checked, and passed
    hang = problems[HANGS]
    assert (hang.column, hang.file) == ("photo", f"media/{HANGS}.png")
    assert "did not finish within 1 s" in hang.message and "--drop-invalid" in hang.fix
    assert str(hang).startswith(f"row {HANGS}, column 'photo', file 'media/{HANGS}.png': decoding did not")
    crash = problems[CRASHES]
    assert (crash.column, crash.file) == ("photo", f"media/{CRASHES}.png")
    assert "crashed" in crash.message and str(-signal.SIGSEGV) in crash.message


def test_dropping_the_hostile_rows_keeps_the_rest_cached(hostile_table: Path) -> None:
    prepared = prepare_data(_config(hostile_table, drop_invalid=True), show_progress=False)
    assert prepared.dropped_rows == [HANGS, CRASHES] and len(prepared.table) == 14
    assert prepared.preprocessor.cache.misses == 14  # decoded in the workers, counted here
    again = prepare_data(_config(hostile_table, drop_invalid=True), show_progress=False)
    # the good rows come from the store; only the two hostile files are tried (and stopped) again
    assert again.preprocessor.cache.hits == 14 and again.dropped_rows == [HANGS, CRASHES]


def test_in_process_validation_reports_the_same_problems(tmp_path: Path) -> None:
    """workers=0 (no pool) and the pool find the same problems with the same words."""
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "bad.png").write_bytes(b"not a png")
    rows = [{"photo": "media/bad.png", "label": "a"}, {"photo": "media/none.png", "label": "b"}]
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    messages = []
    for workers in (0, 2):
        with pytest.raises(DataError) as info:
            prepare_data(_config(tmp_path, workers=workers), show_progress=False)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "row 1, column 'photo', file 'media/none.png': file not found" in messages[0]
