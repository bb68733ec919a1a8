"""Table edits the evaluation tools share: an input removed from rows, or moved between rows.

An input is a column (text, image, audio) or a group of tabular columns (the `numeric` and `category`
inputs), so these work on the input's columns together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from polyfuse.data.preprocess import Preprocessor, TargetSpec
from polyfuse.data.schema import Modality
from polyfuse.data.table import Table

# The metric a curve or a contribution is measured in, per task: higher is better for all three.
PRIMARY_METRIC = {"classification": "accuracy", "multilabel": "macro_f1", "regression": "r2"}


def input_columns(preprocessor: Preprocessor, name: str) -> list[str]:
    """The table columns behind input `name`."""
    modality = preprocessor.inputs[name]
    if modality is Modality.NUMERIC:
        return list(preprocessor.numeric_columns)
    if modality is Modality.CATEGORY:
        return list(preprocessor.category_columns)
    return [name]


def with_frame(table: Table, frame: pd.DataFrame) -> Table:
    return Table(frame.reset_index(drop=True), table.base_dir, table.source, table.media_paths)


def without_input(
    table: Table, preprocessor: Preprocessor, name: str, rows: np.ndarray[Any, Any] | None = None
) -> Table:
    """The table with input `name` missing (empty cells, as a missing value in the user's table) in every
    row, or in the rows where the bool mask `rows` (N,) holds."""
    frame = table.frame.copy()
    chosen = np.ones(len(frame), dtype=bool) if rows is None else rows
    for column in input_columns(preprocessor, name):
        if column in frame.columns:
            frame[column] = frame[column].astype(object)
            frame.loc[chosen, column] = None
    return with_frame(table, frame)


def permuted_input(table: Table, preprocessor: Preprocessor, name: str, seed: int) -> Table:
    """The table with input `name`'s cells moved to other rows by a seeded permutation (the input keeps its
    distribution but loses its link to the rest of the row)."""
    frame = table.frame.copy()
    order = np.random.default_rng(seed).permutation(len(frame))
    for column in input_columns(preprocessor, name):
        if column in frame.columns:
            frame[column] = frame[column].to_numpy(dtype=object)[order]
    return with_frame(table, frame)


def default_target(specs: dict[str, TargetSpec], target: str | None, *, allow_regression: bool = True) -> str:
    """The target to analyse: the one named, else the first classification target, else the first."""
    if not specs:
        raise ValueError("this model has no supervised target to analyse")
    if target is not None:
        if target not in specs:
            raise ValueError(f"unknown target {target!r}; targets: {list(specs)}")
        chosen = target
    else:
        chosen = next((t for t, s in specs.items() if s.task == "classification"), next(iter(specs)))
    if not allow_regression and specs[chosen].task != "classification":
        raise ValueError(f"target {chosen!r} is {specs[chosen].task}; this needs a classification target")
    return chosen
