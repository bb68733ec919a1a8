"""Library functions behind `polyfuse evaluate` and `polyfuse predict` (the CLI only parses options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from polyfuse.atomic import atomic_write_text
from polyfuse.data.errors import DataError, Problem
from polyfuse.data.splits import SPLIT_ALIASES
from polyfuse.data.table import Table, read_table
from polyfuse.predict import Predictor


def _rows(predictor: Predictor, table_path: Path, split: str | None) -> Table:
    table = read_table(table_path)
    return table.subset(split_positions(predictor, table, table_path, split))


def split_positions(predictor: Predictor, table: Table, table_path: Path, split: str | None) -> list[int]:
    """Positions of the table's rows in `split` (all rows when None), by the model's split column."""
    if split is None:
        return list(range(len(table)))
    column = predictor.config.data.split.column
    if column not in table.frame.columns:
        raise DataError(
            [Problem(f"--split needs the split column '{column}' in the table", file=str(table_path))]
        )
    wanted = SPLIT_ALIASES.get(split.lower(), split.lower())
    names = table.frame[column].astype(str).str.strip().str.lower().map(lambda v: SPLIT_ALIASES.get(v, v))
    rows = [int(r) for r in names.index[names == wanted]]
    if not rows:
        raise DataError([Problem(f"no rows with split '{split}'", column=column, file=str(table_path))])
    return rows


def evaluate_table(
    model_dir: Path, table_path: Path, split: str | None = None, show_progress: bool = False
) -> dict[str, Any]:
    predictor = Predictor(model_dir, show_progress=show_progress)
    return predictor.evaluate(_rows(predictor, table_path, split))


def predict_table(
    model_dir: Path, table_path: Path, output: Path, split: str | None = None, show_progress: bool = False
) -> pd.DataFrame:
    """Predictions per row (+ `<target>_proba_<class>` columns), keyed by the table's id column if any."""
    predictor = Predictor(model_dir, show_progress=show_progress)
    table = _rows(predictor, table_path, split)
    frame = predictor.predict_table(table)
    ids = [
        c for c, kind in predictor.config.data.columns.items() if kind == "id" and c in table.frame.columns
    ]
    if ids:
        frame.insert(0, ids[0], table.frame[ids[0]].tolist())
    atomic_write_text(output, frame.to_csv(index=False))
    return frame
