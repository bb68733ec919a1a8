"""Library functions behind `polyfuse evaluate` and `polyfuse predict` (the CLI only parses options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from polyfuse.atomic import atomic_write_text
from polyfuse.data.errors import DataError, Problem
from polyfuse.data.prepare import draw_splits, effective_split, resolve_schema
from polyfuse.data.splits import SPLIT_ALIASES
from polyfuse.data.table import Table, read_table
from polyfuse.predict import Predictor


def _rows(
    predictor: Predictor,
    table_path: Path,
    split: str | None,
    *,
    encoding: str | None = None,
) -> Table:
    table, positions = split_positions(predictor, table_path, split, encoding=encoding)
    return table if len(positions) == len(table) else table.subset(positions)


def split_positions(
    predictor: Predictor, table_path: Path, split: str | None, *, encoding: str | None = None
) -> tuple[Table, list[int]]:
    """The whole table and the positions of the rows to score: all of them, or one split. A split comes from the table's split
    column, or, for the table the model was trained on with a drawn split (random / stratified / group),
    is drawn again exactly as training drew it."""
    data = predictor.config.data
    table = read_table(table_path, encoding=encoding if encoding is not None else data.encoding)
    trained_on = _same_file(data.table, table_path)
    if split is None or split.lower() == "all":
        return table, list(range(len(table)))
    present = set(map(str, table.frame.columns))
    known = data.model_copy(
        update={
            "columns": {c: k for c, k in data.columns.items() if c in present},
            "targets": {t: v for t, v in data.targets.items() if t in present},
        }
    )
    schema = resolve_schema(table, known)
    wanted = SPLIT_ALIASES.get(split.lower(), split.lower())
    split_config = effective_split(known, schema)
    if trained_on:
        # Exactly training's assignment, validation rows carved out of train included.
        names = draw_splits(table, known, schema)
    elif split_config.column in present:
        values = table.frame[split_config.column].astype(str).str.strip().str.lower()
        names = values.map(lambda v: SPLIT_ALIASES.get(v, v))
    else:
        raise DataError(
            [
                Problem(
                    f"--split needs a split column '{split_config.column}' in this table (the model's "
                    f"splits were drawn from the table it was trained on, {data.table})",
                    file=str(table_path),
                    fix="add the split column, pass the training table, or leave out --split to score every row",
                )
            ]
        )
    rows = [int(r) for r in names.index[names == wanted]]
    if not rows:
        raise DataError(
            [Problem(f"no rows with split '{split}'", column=split_config.column, file=str(table_path))]
        )
    return table, rows


def _refuse_training_table(model_dir: Path, table_path: Path, split: str | None) -> None:
    """Scoring the whole training table would score the rows the model was trained on."""
    saved = Path(model_dir) / "config.yaml"
    if split is not None or not saved.is_file():
        return  # a missing model folder is reported by the Predictor
    trained_on = (yaml.safe_load(saved.read_text()) or {}).get("data", {}).get("table")
    if isinstance(trained_on, str) and _same_file(Path(trained_on), table_path):
        raise DataError(
            [
                Problem(
                    "this is the table the model was trained on: scoring all of it would score the rows "
                    "it was trained on",
                    file=str(table_path),
                    fix="pass --split test (or --split val), or --split all to score every row anyway",
                )
            ]
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def evaluate_table(
    model_dir: Path,
    table_path: Path,
    split: str | None = None,
    show_progress: bool = False,
    encoding: str | None = None,
    anomaly_label: str | None = None,
) -> dict[str, Any]:
    """Metrics on the rows of one split (or, with split 'all' or on another table than the training one,
    every row). The training table without a split is refused: it would score the training rows.
    `anomaly_label` names a column marking out-of-distribution rows: the anomaly score's ROC-AUC against it
    is added (models with an anomaly score: autoencoder, vae)."""
    _refuse_training_table(model_dir, table_path, split)  # before the model loads: fail fast
    predictor = Predictor(model_dir, show_progress=show_progress)
    rows = _rows(predictor, table_path, split, encoding=encoding)
    if anomaly_label is not None:
        from polyfuse.evaluation.generation import anomaly_labels, anomaly_report

        anomaly_labels(rows, anomaly_label)  # a bad label column fails before the model runs
    metrics = predictor.evaluate(rows)
    if anomaly_label is not None:
        metrics["anomaly"] = anomaly_report(predictor, rows, anomaly_label)
    return metrics


def predict_table(
    model_dir: Path,
    table_path: Path,
    output: Path,
    split: str | None = None,
    show_progress: bool = False,
    encoding: str | None = None,
) -> pd.DataFrame:
    """Predictions per row (+ `<target>_proba_<class>` columns), keyed by the table's id column if any."""
    predictor = Predictor(model_dir, show_progress=show_progress)
    table = _rows(predictor, table_path, split, encoding=encoding)
    frame = predictor.predict_table(table)
    ids = [
        c for c, kind in predictor.config.data.columns.items() if kind == "id" and c in table.frame.columns
    ]
    if ids:
        frame.insert(0, ids[0], table.frame[ids[0]].tolist())
    atomic_write_text(output, frame.to_csv(index=False))
    return frame
