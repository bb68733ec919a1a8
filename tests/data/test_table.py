import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyfuse.data.errors import DataError, MediaError
from polyfuse.data.media import is_missing, resolve_media
from polyfuse.data.table import Table, read_table

ROWS = [
    {"id": 1, "text": "a cat", "image": "img/a.png", "score": 1.5},
    {"id": 2, "text": "NA", "image": "", "score": None},
]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    else:
        frame.to_parquet(path)
    table = read_table(path)
    assert list(table.frame.columns) == ["id", "text", "image", "score"]
    assert table.base_dir == tmp_path.resolve()
    assert table.frame["text"].tolist()[1] == "NA"  # real text "NA" is not a missing value
    assert is_missing(table.frame["image"].tolist()[1])
    assert is_missing(table.frame["score"].tolist()[1])
    assert table.frame["score"].tolist()[0] == 1.5


def test_unknown_format_and_missing_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unknown table format '.xlsx'.*\.csv"):
        read_table(tmp_path / "t.xlsx")


def test_bad_jsonl_line_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match="row 1") as info:
        read_table(path)
    assert "t.jsonl" in str(info.value)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="row 1.*object"):
        read_table(path)


def test_resolve_media_paths_bytes_base64_and_urls(tmp_path: Path) -> None:
    assert resolve_media("img/a.png", tmp_path) == tmp_path / "img/a.png"
    assert resolve_media("/abs/a.png", tmp_path) == Path("/abs/a.png")
    assert resolve_media(None, tmp_path) is None
    assert resolve_media(float("nan"), tmp_path) is None
    payload = b"\x89PNG" + bytes(range(256)) * 2
    assert resolve_media(payload, tmp_path) == payload
    encoded = base64.b64encode(payload).decode()
    assert resolve_media(encoded, tmp_path) == payload
    assert resolve_media("data:image/png;base64," + encoded, tmp_path) == payload
    # From a file table, a long base64-looking string is a path, not data.
    assert resolve_media(encoded, tmp_path, allow_base64=False) == tmp_path / encoded
    for url in ["http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "gopher://x"]:
        with pytest.raises(MediaError, match="URLs are not accepted"):
            resolve_media(url, tmp_path)


def _same_value(expected: object, got: object) -> bool:
    if type(expected) is not type(got):
        return False
    if expected is pd.NaT or (isinstance(expected, float) and expected != expected):  # NaT, NaN
        return got is pd.NaT or got != got
    return bool(expected == got) if not isinstance(expected, list) else expected == got


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame(
            {"a": [1, 2, 3], "b": [1.5, float("nan"), 2.0], "c": ["x", None, "z"], "d": [True, False, True]}
        ),
        pd.DataFrame(
            {
                "a": pd.array([1, None, 3], dtype="Int64"),
                "b": pd.array([1.0, None, 2.5], dtype="Float64"),
                "c": pd.array(["x", None, "y"], dtype="string"),
                "d": pd.array([True, None, False], dtype="boolean"),
            }
        ),
        pd.DataFrame(
            {
                "o": [np.int64(3), np.float32(2.5), "s"],
                "labels": [[1, 2], ["a"], []],
                "t": pd.to_datetime(["2020-01-01", None, "2021-02-02"]),
                "cat": pd.Categorical(["u", "v", None]),
                "when": [np.datetime64("2020-01-01"), np.timedelta64(3, "s"), np.bool_(True)],
                "text": [np.str_("a"), np.complex128(1j), None],
            }
        ),
        pd.DataFrame({1: [1, 2], "1": [3, 4]}),  # column names that are the same as str: the last wins
    ],
)
def test_records_hold_the_values_to_dict_gives(frame: pd.DataFrame) -> None:
    """Table.records builds rows column by column for speed; every value must be what pandas' own
    to_dict("records") gives (its type too: numpy scalars unboxed, pd.NA as None, NaN kept)."""
    expected = [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]
    got = Table(frame).records()
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert list(want) == list(have)
        for column in want:
            assert _same_value(want[column], have[column]), (column, want[column], have[column])
