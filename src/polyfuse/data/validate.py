"""Every problem in a table, found before any training: each names its row, column and file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from polyfuse.data.errors import DataError, Problem
from polyfuse.data.media import is_missing
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.table import Table


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
) -> ValidationReport:
    """Decode and featurise every cell (which also fills the feature cache) and check every label."""
    report = ValidationReport()
    records = [{str(k): v for k, v in r.items()} for r in table.frame.to_dict("records")]
    for row, record in enumerate(records):
        try:
            sample = preprocessor.encode_inputs(record, table.base_dir, allow_base64=table.from_python)
            if all(v is None for v in sample.values()):
                report.problems.append(
                    Problem(
                        f"every input is missing ({', '.join(preprocessor.inputs)})",
                        row=row,
                        fix="fill at least one input or drop the row (--drop-invalid)",
                    )
                )
        except DataError as e:
            report.problems.extend(p.at_row(row) for p in e.problems)
        if check_targets:
            try:
                preprocessor.encode_targets(record)
            except DataError as e:
                report.problems.extend(p.at_row(row) for p in e.problems)
        report.rows_checked += 1
        if progress is not None:
            progress(1)
    return report
