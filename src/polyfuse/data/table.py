"""Read a user's table (CSV, TSV, JSONL, Parquet), remembering the folder relative media paths start from."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionDtype

from polyfuse.data.errors import DataError, Problem

TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class Table:
    """A table's rows plus where relative media paths resolve from.

    frame:    the rows as read, in file order, with a fresh 0..N-1 index (error messages count rows this way)
    base_dir: the table file's folder, or None for a table built in Python (then relative paths resolve
              against the working directory and base64 strings are accepted as media)
    source:   the file read, if any
    media_paths: whether a string in an image / audio cell may name a file. On for local tables (a file
              or rows built in Python); a server turns it off, so a request's strings are only ever data
              (base64) and can never make it read one of its own files.
    """

    frame: pd.DataFrame
    base_dir: Path | None = None
    source: Path | None = None
    media_paths: bool = True
    _records: list[dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by column name (str), made once per table: validation and the datasets
        read the same dicts. Read-only, as the frame is.

        The values are `frame.to_dict("records")`'s (Python scalars where pandas boxes them), built column
        by column: 2 ms per 3,000 rows of AV-Digits where `to_dict` takes 16 ms.
        """
        if self._records is None:
            names = [str(c) for c in self.frame.columns]
            columns = [self._column_values(i) for i in range(len(names))]
            self._records = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        return self._records

    def _column_values(self, position: int) -> list[Any]:
        column = self.frame.iloc[:, position]
        dtype = column.dtype
        # pandas' default text dtype holds only str and NaN, which to_dict leaves as they are
        plain_text = isinstance(dtype, pd.StringDtype) and dtype.na_value is not pd.NA
        if (dtype == np.dtype(object) or isinstance(dtype, ExtensionDtype)) and not plain_text:
            # as to_dict does: the values as iterated (numpy's tolist would turn a timedelta64 in an object
            # column into a datetime.timedelta), numpy scalars made Python ones, pd.NA made None
            return [_python_scalar(v) for v in column]
        return column.tolist()  # numpy columns: Python scalars, as to_dict gives

    @property
    def from_python(self) -> bool:
        return self.source is None

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, rows: list[int] | pd.Index) -> Table:
        """Rows by position, renumbered; the base folder is kept."""
        positions = list(rows)
        part = Table(
            self.frame.iloc[positions].reset_index(drop=True), self.base_dir, self.source, self.media_paths
        )
        if self._records is not None:
            part._records = [self._records[i] for i in positions]
        return part


def _python_scalar(value: Any) -> Any:
    """What pandas' to_dict makes of a value in an object or extension column (its maybe_box_native)."""
    if value is pd.NA:
        return None
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value)
    if isinstance(value, np.timedelta64):  # before np.integer: numpy counts it as one
        return pd.Timedelta(value)
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    return value


def read_table(
    path: str | Path | pd.DataFrame | list[dict[str, object]],
    base_dir: Path | None = None,
    encoding: str | None = None,
) -> Table:
    """Read a table file, or wrap rows built in Python (a DataFrame or a list of dicts keyed by column).

    Text files are read as UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured) unless `encoding` names
    another; a file that is not UTF-8 is refused with the line at fault and the encoding it looks like,
    never decoded by guesswork."""
    if isinstance(path, pd.DataFrame):
        return Table(path.reset_index(drop=True), base_dir)
    if isinstance(path, list):
        return Table(pd.DataFrame.from_records(path), base_dir)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError([Problem("table file not found", file=str(path), fix="check the path")])
    if path.is_dir():
        raise DataError([Problem("expected a table file, got a folder", file=str(path))])
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            [
                Problem(
                    f"unknown table format '{path.suffix}'",
                    file=str(path),
                    fix=f"use one of {sorted(TABLE_FORMATS)}",
                )
            ]
        )
    try:
        frame = _read(path, kind, encoding or _bom_encoding(path))
    except DataError:
        raise
    except LookupError:
        raise DataError(
            [Problem(f"unknown encoding '{encoding}'", file=str(path), fix="use e.g. utf-8, cp1252, latin-1")]
        ) from None
    except UnicodeDecodeError:
        raise DataError([_encoding_problem(path, encoding)]) from None
    except pd.errors.EmptyDataError:
        raise DataError(
            [Problem("the file is empty (not even a header row)", file=str(path), fix="check the path")]
        ) from None
    except (pd.errors.ParserError, csv.Error) as e:
        raise DataError([Problem(f"cannot parse {kind.upper()}: {e}", file=str(path))]) from None
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on a corrupt file
        raise DataError([Problem(f"cannot read table: {e}", file=str(path))]) from None
    if frame.empty:
        found = (
            f"a header ({', '.join(map(str, frame.columns))}) but" if len(frame.columns) else "no columns and"
        )
        raise DataError(
            [Problem(f"the table has {found} no rows", file=str(path), fix="add rows to the table")]
        )
    return Table(frame.reset_index(drop=True), base_dir or path.parent.resolve(), path.resolve())


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _bom_encoding(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(3)
    return next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8-sig")


def _encoding_problem(path: Path, encoding: str | None) -> Problem:
    """Where a file stops being `encoding` (UTF-8 by default), and which common encoding reads it."""
    data = path.read_bytes()
    try:
        data.decode(encoding or "utf-8")
        at = len(data)  # pandas failed on a chunk boundary only; report the file as a whole
    except UnicodeDecodeError as e:
        at = e.start
    line = data.count(b"\n", 0, at) + 1
    end = data.find(b"\n", at)
    bad = data[data.rfind(b"\n", 0, at) + 1 : end if end >= 0 else len(data)]
    guess = next((name for name in ("cp1252", "latin-1") if _decodes(data, name)), "latin-1")
    shown = bad.decode(guess, errors="replace").strip()[:60]
    byte = f"byte 0x{data[at]:02x}" if at < len(data) else "a byte"
    return Problem(
        f"the file is not {encoding or 'UTF-8'} text: {byte} on line {line} "
        f"cannot be decoded (read as {guess}: {shown!r})",
        file=str(path),
        fix=f"save it as UTF-8, or pass --encoding {guess} (data.encoding: {guess} in a config)",
    )


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _read(path: Path, kind: str, encoding: str) -> pd.DataFrame:
    if kind in ("csv", "tsv"):
        # keep_default_na=False + explicit na_values: an empty cell is missing, but the text "NA" or
        # "None" in a text column is somebody's real text.
        return pd.read_csv(
            path,
            sep="," if kind == "csv" else "\t",
            keep_default_na=False,
            na_values=[""],
            encoding=encoding,
        )
    if kind == "jsonl":
        rows = []
        with path.open(encoding=encoding) as f:
            for number, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        [Problem(f"invalid JSON (line {number + 1}): {e.msg}", row=number, file=str(path))]
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(
                        [Problem("each JSONL line must be an object", row=number, file=str(path))]
                    )
                rows.append(row)
        return pd.DataFrame.from_records(rows)
    return pd.read_parquet(path)
