"""Every problem in a table, found before any training: each names its row, column and file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from polyfuse.data.cache import NotCached
from polyfuse.data.decode_pool import decode_rows
from polyfuse.data.errors import DataError, Problem
from polyfuse.data.media import is_missing
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.table import Table

DEFAULT_FILE_TIME_LIMIT_S = 60.0  # a file this slow to decode is hostile or far too large for training


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)
    rows_checked: int = 0

    @property
    def invalid_rows(self) -> list[int]:
        return sorted({p.row for p in self.problems if p.row is not None})

    def raise_if_invalid(self) -> None:
        if self.problems:
            raise DataError(self.problems)


def check_ids(table: Table, id_column: str | None) -> list[Problem]:
    """Duplicate or missing ids (ids key predictions and the cache of results, so they must be unique)."""
    if id_column is None or id_column not in table.frame.columns:
        return []
    problems = []
    first_seen: dict[str, int] = {}
    for row, value in enumerate(table.frame[id_column].tolist()):
        if is_missing(value):
            problems.append(Problem("id is missing", row=row, column=id_column, fix="give every row an id"))
            continue
        key = str(value)
        if key in first_seen:
            problems.append(
                Problem(
                    f"duplicate id '{key}' (first at row {first_seen[key]})",
                    row=row,
                    column=id_column,
                    fix="make ids unique or drop the duplicate (--drop-invalid)",
                )
            )
        else:
            first_seen[key] = row
    return problems


def validate_rows(
    table: Table,
    preprocessor: Preprocessor,
    *,
    check_targets: bool = True,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
    file_time_limit_s: float = DEFAULT_FILE_TIME_LIMIT_S,
) -> ValidationReport:
    """Decode and featurise every cell (which also fills the feature cache) and check every label.

    workers 0: all in this process, with no time limit. workers N >= 1: rows whose features are cached
    are checked here; the others are decoded on N processes, each file stopped after `file_time_limit_s`
    and reported as its row's problem (see polyfuse.data.decode_pool).
    """
    records = table.records()
    check = partial(
        check_row, base_dir=table.base_dir, allow_base64=table.from_python, check_targets=check_targets
    )
    found: dict[int, list[Problem]] = {}
    to_decode: list[int] = []
    with preprocessor.cache.batch_writes():
        for row, record in enumerate(records):
            try:
                found[row] = check(preprocessor, record, cached_only=workers > 0)
            except NotCached:
                to_decode.append(row)
                continue
            if progress is not None:
                progress(1)
        if to_decode:
            found |= decode_rows(
                preprocessor,
                records,
                to_decode,
                check,
                workers=workers,
                time_limit_s=file_time_limit_s,
                progress=progress,
            )
    return ValidationReport([p.at_row(row) for row in range(len(records)) for p in found[row]], len(records))


def check_row(
    preprocessor: Preprocessor,
    record: Mapping[str, Any],
    on_cell: Callable[[str], None] | None = None,
    *,
    base_dir: Path | None,
    allow_base64: bool,
    check_targets: bool = True,
    cached_only: bool = False,
) -> list[Problem]:
    """Every problem of one row (the caller adds the row number).

    `cached_only`: raise NotCached instead of reading or decoding a file whose features are not cached.
    """
    problems: list[Problem] = []
    try:
        sample = preprocessor.encode_inputs(
            record, base_dir, allow_base64=allow_base64, check=True, cached_only=cached_only, on_cell=on_cell
        )
        if all(v is None for v in sample.values()):
            problems.append(
                Problem(
                    f"every input is missing ({', '.join(preprocessor.inputs)})",
                    fix="fill at least one input or drop the row (--drop-invalid)",
                )
            )
    except DataError as e:
        problems += e.problems
    if check_targets:
        try:
            preprocessor.encode_targets(record)
        except DataError as e:
            problems += e.problems
    return problems
