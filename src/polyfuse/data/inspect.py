"""`polyfuse data inspect`: the inferred schema, counts, missing rates, class balance and every problem."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from polyfuse.data.errors import DataError, Problem
from polyfuse.data.media import is_missing
from polyfuse.data.prepare import DataConfig, effective_split, prepare_data, resolve_schema
from polyfuse.data.preprocess import infer_task
from polyfuse.data.schema import Role, TableSchema
from polyfuse.data.splits import SPLITS, empty_split_problems
from polyfuse.data.table import read_table


@dataclass
class ColumnSummary:
    name: str
    kind: str
    reason: str
    missing: int
    distinct: int


@dataclass
class InspectReport:
    table: Path
    rows: int
    schema: TableSchema
    columns: list[ColumnSummary]
    split_counts: dict[str, int] = field(default_factory=dict)
    class_balance: dict[str, dict[str, int]] = field(default_factory=dict)
    numeric_targets: dict[str, dict[str, float]] = field(default_factory=dict)  # min / median / max
    problems: list[Problem] = field(default_factory=list)


def inspect_table(config: DataConfig, *, show_progress: bool = True) -> InspectReport:
    """Everything `data inspect` prints. Problems are collected, not raised (unless unreadable)."""
    table = read_table(config.table, encoding=config.encoding)
    schema = resolve_schema(table, config)
    if not config.targets:
        config = config.model_copy(update={"targets": {c: None for c in schema.columns_of(Role.LABEL)}})
    frame = table.frame
    summaries = [
        ColumnSummary(
            name=c.name,
            kind=c.kind.value,
            reason=c.reason,
            missing=int(sum(is_missing(v) for v in frame[c.name].tolist())),
            distinct=int(frame[c.name].astype(str).nunique()),
        )
        for c in schema.columns
    ]
    report = InspectReport(config.table, len(frame), schema, summaries)
    for target in config.targets:
        values = [v for v in frame[target].tolist() if not is_missing(v)] if target in frame.columns else []
        task = config.targets[target] or (infer_task(values) if values else "classification")
        if task == "regression":
            numbers = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
            report.numeric_targets[target] = {
                "min": float(numbers.min()),
                "median": float(numbers.median()),
                "max": float(numbers.max()),
            }
        else:
            report.class_balance[target] = dict(sorted(Counter(str(v) for v in values).items()))
    try:
        prepared = prepare_data(config.model_copy(update={"drop_invalid": True}), show_progress=show_progress)
    except DataError as e:
        report.problems = e.problems
        return report
    report.problems = prepared.report.problems
    report.split_counts = {name: int((prepared.splits == name).sum()) for name in SPLITS}
    report.problems += empty_split_problems(prepared.splits, effective_split(config, schema))
    return report
