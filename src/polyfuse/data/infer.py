"""Column → modality inference from names, dtypes, file extensions and a sample of cell contents."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pandas as pd

from polyfuse.data.errors import DataError, Problem, did_you_mean
from polyfuse.data.media import is_missing
from polyfuse.data.schema import ColumnSchema, Modality, Role, TableSchema
from polyfuse.data.table import Table

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aiff", ".aif"}
# Magic bytes of encoded media handed over as bytes / base64 from Python.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
AUDIO_MAGIC = (b"fLaC", b"OggS", b"ID3")

ID_NAMES = re.compile(r"^(id|uid|uuid|row_?id|example_?id)$", re.IGNORECASE)
# Names that are ids only when unique (a `user_id` repeated across rows is a feature).
MAYBE_ID_NAMES = re.compile(r"^(key|.*_id)$", re.IGNORECASE)
LABEL_NAMES = re.compile(r"^(label|labels|target|targets|class|y|answer|outcome)$", re.IGNORECASE)
SPLIT_NAMES = re.compile(r"^(split|fold|subset|partition)$", re.IGNORECASE)
GROUP_NAMES = re.compile(r"^(group|speaker|speaker_?id|subject|patient|session|user)$", re.IGNORECASE)
SPLIT_VALUES = {"train", "training", "val", "valid", "validation", "dev", "test", "testing", "eval"}

SAMPLE_SIZE = 200
MEDIA_MIN_FRACTION = 0.8  # share of sampled cells that must look like one kind of media file


def infer_schema(table: Table, overrides: Mapping[str, str] | None = None) -> TableSchema:
    """A kind per column; `overrides` (column → kind name) win and are checked against the table."""
    overrides = dict(overrides or {})
    problems = []
    for name, kind in overrides.items():
        if name not in table.frame.columns:
            problems.append(
                Problem(
                    f"a kind is set for a column not in the table{did_you_mean(name, map(str, table.frame.columns))}; "
                    f"columns: {list(table.frame.columns)}",
                    column=name,
                )
            )
        elif kind not in _KINDS:
            problems.append(Problem(f"unknown kind '{kind}'; choose one of {sorted(_KINDS)}", column=name))
    if problems:
        raise DataError(problems)
    columns = []
    for name in table.frame.columns:
        if name in overrides:
            columns.append(ColumnSchema(name=str(name), kind=_KINDS[overrides[name]], reason="set in config"))
        else:
            kind, reason = infer_column(str(name), table.frame[name])
            columns.append(ColumnSchema(name=str(name), kind=kind, reason=reason))
    return TableSchema(columns=columns)


_KINDS: dict[str, Modality | Role] = {k.value: k for k in [*Modality, *Role]}


def infer_column(name: str, series: pd.Series) -> tuple[Modality | Role, str]:
    """The kind of one column and a short reason for `data inspect`."""
    values = [v for v in series.tolist() if not is_missing(v)]
    if not values:
        return Role.IGNORE, "every cell is empty"
    sample = values[:SAMPLE_SIZE]
    n_unique = series.nunique(dropna=True)

    if SPLIT_NAMES.match(name) and {str(v).strip().lower() for v in sample} <= SPLIT_VALUES:
        return Role.SPLIT, "split names"
    if LABEL_NAMES.match(name):
        return Role.LABEL, f"column name, {n_unique} distinct values"
    if GROUP_NAMES.match(name):
        return Role.GROUP, "column name (rows of one group stay in one split)"
    if ID_NAMES.match(name):
        return Role.ID, "column name"
    if MAYBE_ID_NAMES.match(name) and n_unique == len(values):
        return Role.ID, "column name, unique values"

    media = _media_kind(sample)
    if media is not None:
        return media
    if pd.api.types.is_bool_dtype(series):
        return Modality.CATEGORY, "booleans"
    if pd.api.types.is_numeric_dtype(series):
        if pd.api.types.is_integer_dtype(series) and n_unique <= 10 and len(values) >= 5 * n_unique:
            return Modality.CATEGORY, f"integers with only {n_unique} distinct values"
        return Modality.NUMERIC, "numbers"
    strings = [str(v) for v in sample]
    numbers = sum(_is_number(s) for s in strings)
    if numbers >= 0.9 * len(strings) and not all(s.strip().lstrip("-").isdigit() for s in strings):
        # Mostly decimals: a numeric column with a few bad cells, which validation will name.
        return Modality.NUMERIC, f"numbers ({numbers}/{len(strings)} sampled cells parse)"
    mean_words = sum(len(s.split()) for s in strings) / len(strings)
    if n_unique <= max(20, len(values) // 20) and mean_words <= 3:
        return Modality.CATEGORY, f"short strings, {n_unique} distinct values"
    if numbers == len(strings):
        return Modality.NUMERIC, "numbers stored as text"
    return Modality.TEXT, f"free text, {mean_words:.1f} words on average"


def _media_kind(sample: list[object]) -> tuple[Modality, str] | None:
    counts = {Modality.IMAGE: 0, Modality.AUDIO: 0}
    for value in sample:
        kind = _cell_media_kind(value)
        if kind is not None:
            counts[kind] += 1
    for kind, n in counts.items():
        if n >= MEDIA_MIN_FRACTION * len(sample):
            return kind, f"{n}/{len(sample)} sampled cells are {kind.value} files"
    return None


def _cell_media_kind(value: object) -> Modality | None:
    if isinstance(value, bytes | bytearray):
        head = bytes(value[:12])
        if head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            return Modality.IMAGE
        if head.startswith(AUDIO_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WAVE"):
            return Modality.AUDIO
        return None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text.startswith("data:image/"):
        return Modality.IMAGE
    if text.startswith("data:audio/"):
        return Modality.AUDIO
    suffix = "." + text.rsplit(".", 1)[-1] if "." in text[-6:] else ""
    if suffix in IMAGE_EXTENSIONS:
        return Modality.IMAGE
    if suffix in AUDIO_EXTENSIONS:
        return Modality.AUDIO
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
