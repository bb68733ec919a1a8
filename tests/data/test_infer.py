from pathlib import Path

import pandas as pd
import pytest

from polyfuse.data.errors import DataError
from polyfuse.data.infer import infer_schema
from polyfuse.data.schema import Modality, Role
from polyfuse.data.table import Table


def _table() -> Table:
    n = 60
    return Table(
        pd.DataFrame(
            {
                "id": range(n),
                "review": [
                    f"this product was {'great' if i % 2 else 'bad'} and arrived on day {i}" for i in range(n)
                ],
                "photo": [f"photos/{i}.JPG" for i in range(n)],
                "clip": [f"sounds/{i}.wav" if i % 7 else None for i in range(n)],
                "price": [float(i) * 1.5 for i in range(n)],
                "stars": [i % 5 for i in range(n)],
                "colour": ["red", "green", "blue"] * (n // 3),
                "label": [i % 2 for i in range(n)],
                "split": ["train", "test", "val"] * (n // 3),
                "speaker": [f"s{i % 4}" for i in range(n)],
                "empty": [None] * n,
            }
        ),
        Path("."),
    )


def test_inference_of_every_kind() -> None:
    schema = infer_schema(_table())
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {
        "id": Role.ID,
        "review": Modality.TEXT,
        "photo": Modality.IMAGE,
        "clip": Modality.AUDIO,
        "price": Modality.NUMERIC,
        "stars": Modality.CATEGORY,
        "colour": Modality.CATEGORY,
        "label": Role.LABEL,
        "split": Role.SPLIT,
        "speaker": Role.GROUP,
        "empty": Role.IGNORE,
    }
    assert all(c.reason for c in schema.columns)
    assert schema.input_names() == {
        "category": Modality.CATEGORY,
        "clip": Modality.AUDIO,
        "numeric": Modality.NUMERIC,
        "photo": Modality.IMAGE,
        "review": Modality.TEXT,
    }


def test_bytes_cells_are_sniffed() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    wav = b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 20
    table = Table(pd.DataFrame({"a": [png] * 5, "b": [wav] * 5}))
    kinds = {c.name: c.kind for c in infer_schema(table).columns}
    assert kinds == {"a": Modality.IMAGE, "b": Modality.AUDIO}


def test_overrides_win_and_are_checked() -> None:
    schema = infer_schema(_table(), {"stars": "numeric", "speaker": "category"})
    assert schema.kind_of("stars") == Modality.NUMERIC
    assert schema.kind_of("speaker") == Modality.CATEGORY
    with pytest.raises(DataError) as info:
        infer_schema(_table(), {"nope": "text", "review": "video"})
    message = str(info.value)
    assert "column 'nope'" in message and "not in the table" in message
    assert "unknown kind 'video'" in message and "image" in message
