"""K-fold cross-validation: `polyfuse cv CONFIG --folds K [--group-by COL] -o CV_DIR`.

CV_DIR/
  plan.json             folds, seed, grouping, the table: a resume checks it is the same experiment
  folds.csv             row → fold (the row's position in the table as read)
  fold_<k>/table.csv    the table with a `polyfuse_cv_split` column: fold k is `test`, the rest `train`
                        (training carves its validation rows out of train as usual); media paths absolute
  fold_<k>/run/         the training run (checkpoints, logs, model/), resumed from its last checkpoint
  fold_<k>/metrics.json written once fold k is done: a rerun skips finished folds
  cv.json               per target and metric: mean, std (ddof 1) and the per-fold values
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polyfuse.atomic import atomic_write_text
from polyfuse.config import RunConfig
from polyfuse.data.errors import DataError, Problem
from polyfuse.data.media import is_missing
from polyfuse.data.prepare import resolve_schema
from polyfuse.data.schema import Modality
from polyfuse.data.splits import SplitConfig
from polyfuse.data.table import read_table

CV_SPLIT_COLUMN = "polyfuse_cv_split"


def assign_folds(
    labels: list[Any] | None, groups: list[Any] | None, folds: int, seed: int, n_rows: int
) -> np.ndarray[Any, Any]:
    """(N,) fold per row. Grouped: whole groups, largest first, each to the fold with fewest rows so far
    (ties: lowest fold), groups of equal size in a seeded order. Else stratified by `labels`: each class's
    rows, in a seeded order, dealt round the folds in turn (continuing where the last class stopped), so
    every fold holds each class's share within one row. No labels: the same over one class."""
    rng = np.random.default_rng(seed)
    fold = np.full(n_rows, -1, dtype=np.int64)
    if groups is not None:
        keys = pd.Series([str(g) for g in groups])
        members = {g: np.flatnonzero(keys.to_numpy() == g) for g in sorted(keys.unique())}
        order = list(members)
        rng.shuffle(order)
        order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the seeded order
        if len(order) < folds:
            raise DataError([Problem(f"{len(order)} groups cannot fill {folds} folds; use fewer folds")])
        sizes = [0] * folds
        for g in order:
            k = int(np.argmin(sizes))
            fold[members[g]] = k
            sizes[k] += len(members[g])
        return fold
    classes = pd.Series([str(v) for v in labels]) if labels is not None else pd.Series(["all"] * n_rows)
    position = 0
    for value in sorted(classes.unique()):
        rows = rng.permutation(np.flatnonzero(classes.to_numpy() == value))
        fold[rows] = (position + np.arange(len(rows))) % folds
        position += len(rows)
    return fold


def cross_validate(
    config: RunConfig,
    cv_dir: Path,
    folds: int,
    *,
    group_by: str | None = None,
    seed: int | None = None,
    show_progress: bool = False,
    log: Callable[..., Any] = print,
) -> dict[str, Any]:
    """Train one model per fold (resuming unfinished folds, skipping finished ones); returns cv.json."""
    from polyfuse.training.run import train

    if folds < 2:
        raise DataError([Problem("cross-validation needs at least 2 folds", fix="pass --folds 2 or more")])
    cv_dir = Path(cv_dir)
    seed = config.training.seed if seed is None else seed
    table = read_table(config.data.table, encoding=config.data.encoding)
    frame = table.frame
    if group_by is not None and group_by not in frame.columns:
        raise DataError(
            [
                Problem(
                    f"no column '{group_by}' to group folds by",
                    file=str(config.data.table),
                    fix=f"--group-by takes one of the table's columns: {', '.join(map(str, frame.columns))}",
                )
            ]
        )
    stratify = config.data.split.stratify or next(iter(config.data.targets), None)
    labels = frame[stratify].tolist() if stratify in frame.columns else None
    groups = frame[group_by].tolist() if group_by is not None else None
    if len(frame) < folds:
        raise DataError(
            [Problem(f"{len(frame)} rows cannot fill {folds} folds", file=str(config.data.table))]
        )
    fold_of = assign_folds(labels, groups, folds, seed, len(frame))
    plan = {
        "table": str(Path(config.data.table).resolve()),
        "rows": len(frame),
        "folds": folds,
        "group_by": group_by,
        "stratified_by": None if group_by is not None else stratify,
        "seed": seed,
    }
    _check_plan(cv_dir, plan)
    atomic_write_text(cv_dir / "plan.json", json.dumps(plan, indent=2))
    atomic_write_text(
        cv_dir / "folds.csv", pd.DataFrame({"row": range(len(frame)), "fold": fold_of}).to_csv(index=False)
    )
    absolute = _with_absolute_media(table, config)
    per_fold: list[dict[str, Any]] = []
    for k in range(folds):
        fold_dir = cv_dir / f"fold_{k}"
        done = fold_dir / "metrics.json"
        if done.is_file():
            log(f"fold {k + 1}/{folds}: already done")
            per_fold.append(json.loads(done.read_text()))
            continue
        log(f"fold {k + 1}/{folds}: {int((fold_of == k).sum())} test rows")
        fold_table = fold_dir / "table.csv"
        if not fold_table.is_file():
            split = np.where(fold_of == k, "test", "train")
            atomic_write_text(fold_table, absolute.assign(**{CV_SPLIT_COLUMN: split}).to_csv(index=False))
        fold_config = config.model_copy(
            update={
                "data": config.data.model_copy(
                    update={
                        "table": fold_table,
                        "encoding": None,
                        "split": SplitConfig(
                            strategy="column",
                            column=CV_SPLIT_COLUMN,
                            val_fraction_of_train=config.data.split.val_fraction_of_train,
                            seed=config.data.split.seed,
                        ),
                    }
                )
            }
        )
        result = train(fold_config, fold_dir / "run", resume=True, show_progress=show_progress, log=log)
        metrics = result.metrics.get("test", {})
        atomic_write_text(done, json.dumps(metrics, indent=2))
        per_fold.append(metrics)
    summary = {**plan, "metrics": summarise(per_fold)}
    atomic_write_text(cv_dir / "cv.json", json.dumps(summary, indent=2))
    return summary


def summarise(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """section → metric → {"mean", "std" (ddof 1), "folds": [value per fold]} for every float metric."""
    out: dict[str, Any] = {}
    for section, values in per_fold[0].items():
        if not isinstance(values, dict):
            continue
        for metric, first in values.items():
            if not isinstance(first, float):
                continue
            series = [float(f[section][metric]) for f in per_fold]
            out.setdefault(section, {})[metric] = {
                "mean": statistics.fmean(series),
                "std": statistics.stdev(series) if len(series) > 1 else 0.0,
                "folds": series,
            }
    return out


def _check_plan(cv_dir: Path, plan: dict[str, Any]) -> None:
    saved = cv_dir / "plan.json"
    if saved.is_file() and json.loads(saved.read_text()) != plan:
        raise DataError(
            [
                Problem(
                    "this folder holds another cross-validation (table, folds, grouping or seed differ)",
                    file=str(saved),
                    fix="pass a new -o CV_DIR, or the same options to resume this one",
                )
            ]
        )


def _with_absolute_media(table: Any, config: RunConfig) -> pd.DataFrame:
    """The rows with image / audio paths made absolute, so the fold tables can live in CV_DIR."""
    schema = resolve_schema(table, config.data)
    frame = table.frame.copy()
    base = Path(table.base_dir) if table.base_dir is not None else Path.cwd()
    for column in schema.columns_of(Modality.IMAGE) + schema.columns_of(Modality.AUDIO):
        frame[column] = [
            v if is_missing(v) or Path(str(v)).is_absolute() else str((base / str(v)).resolve())
            for v in frame[column]
        ]
    result: pd.DataFrame = frame
    return result
