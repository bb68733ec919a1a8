"""Train / validation / test assignment: an explicit column, random, stratified by label, or grouped."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from polyfuse.data.errors import DataError, Problem
from polyfuse.data.media import is_missing

SPLITS = ("train", "val", "test")
SPLIT_TITLES = {"train": "training", "val": "validation", "test": "test"}
MAX_NUMERIC_STRATA = (
    10  # a numeric column with more distinct values is binned into at most this many quantiles
)
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "eval": "val",
    "test": "test",
    "testing": "test",
}


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["column", "random", "stratified", "group"] = Field(
        "stratified", description="'column' reads split names from `column`; the others draw with `seed`"
    )
    column: str = Field("split", description="the split column, for strategy 'column'")
    fractions: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train / val / test shares for the drawn strategies"
    )
    val_fraction_of_train: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="with strategy 'column' and no 'val' rows: share of train rows held out for validation "
        "(stratified by the first target), so early stopping never looks at the test rows",
    )
    stratify: str | None = Field(None, description="column to stratify by (default: the first target)")
    group: str | None = Field(
        None, description="column whose groups must not cross splits (strategy 'group')"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"split.fractions must be ≥ 0 and sum to 1, got {self.fractions}")
        if self.fractions[0] <= 0:
            raise ValueError("split.fractions needs a train share above 0")
        return self


def assign_splits(frame: pd.DataFrame, cfg: SplitConfig, default_stratify: str | None = None) -> pd.Series:
    """One of 'train' / 'val' / 'test' per row (a Series aligned with `frame`)."""
    rng = np.random.default_rng(cfg.seed)
    stratify = cfg.stratify or default_stratify
    if cfg.strategy == "column":
        names = _read_split_column(frame, cfg.column)
        if cfg.val_fraction_of_train > 0 and not (names == "val").any():
            train = np.flatnonzero(names.to_numpy() == "train")
            shares = (1 - cfg.val_fraction_of_train, cfg.val_fraction_of_train, 0.0)
            held = _stratified(_labels(frame.iloc[train], stratify, shares), shares, rng)
            names.iloc[train[held == "val"]] = "val"
        return names
    if cfg.strategy == "group":
        if cfg.group is None or cfg.group not in frame.columns:
            raise DataError(
                [Problem("split.strategy 'group' needs split.group naming a column", column=cfg.group)]
            )
        return pd.Series(_grouped(frame[cfg.group], cfg.fractions, rng), index=frame.index)
    labels = (
        np.zeros(len(frame), dtype=np.int64)
        if cfg.strategy == "random"
        else _labels(frame, stratify, cfg.fractions)
    )
    return pd.Series(_stratified(labels, cfg.fractions, rng), index=frame.index)


def _read_split_column(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        raise DataError(
            [Problem("split column not found", column=column, fix="set split.column or another strategy")]
        )
    names = []
    problems = []
    for row, value in enumerate(frame[column].tolist()):
        name = None if is_missing(value) else SPLIT_ALIASES.get(str(value).strip().lower())
        if name is None:
            problems.append(
                Problem(f"split '{value}' is not one of {sorted(SPLIT_ALIASES)}", row=row, column=column)
            )
        names.append(name or "train")
    if problems:
        raise DataError(problems)
    return pd.Series(names, index=frame.index, dtype=object)


def _labels(
    frame: pd.DataFrame, column: str | None, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> np.ndarray:
    """Integer codes of the stratification column (missing values form their own stratum).

    A numeric column with many distinct values (a regression target) is cut into quantile bins, so each
    split still spans its range; a class too small to expect even half a row in the smallest held-out
    share is not stratified on its own but pooled with the other small ones and drawn at random, so
    stratification never leaves a split empty.
    """
    if column is None or column not in frame.columns:
        return np.zeros(len(frame), dtype=np.int64)
    held_out = min((f for f in fractions[1:] if f > 0), default=1.0)
    values = frame[column]
    present = ~values.map(is_missing)
    numbers = pd.to_numeric(values[present], errors="coerce")
    if present.any() and numbers.notna().all() and numbers.nunique() > MAX_NUMERIC_STRATA:
        # about one row per bin in the smallest held-out split
        bins = max(1, min(MAX_NUMERIC_STRATA, int(present.sum() * held_out)))
        codes = np.full(len(frame), -1, dtype=np.int64)
        # ranked first, so tied values never make two bin edges collide
        codes[present.to_numpy()] = pd.qcut(numbers.rank(method="first"), bins, labels=False).to_numpy()
    else:
        codes = pd.factorize(values.astype(str), sort=True)[0].astype(np.int64)
    strata, sizes = np.unique(codes, return_counts=True)
    small = strata[sizes * held_out < 0.5]
    codes[np.isin(codes, small)] = codes.max() + 1  # one pooled stratum, split at random
    return codes


def _stratified(
    labels: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Within each stratum, shuffle and cut by `fractions` (largest remainder), so every class keeps its
    share in every split."""
    out = np.empty(len(labels), dtype=object)
    for stratum in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == stratum))
        counts = _cut(len(rows), fractions)
        start = 0
        for name, count in zip(SPLITS, counts, strict=True):
            out[rows[start : start + count]] = name
            start += count
    return out


def _grouped(
    groups: pd.Series, fractions: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Whole groups go to one split; groups are dealt in a seeded order to the split furthest below its
    target row count, so the shares come close to `fractions` without splitting any group."""
    keys = groups.astype(str).to_numpy()
    unique, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    if len(unique) < sum(f > 0 for f in fractions):
        raise DataError(
            [
                Problem(
                    f"only {len(unique)} group(s) for {sum(f > 0 for f in fractions)} non-empty splits",
                    column=str(groups.name),
                    fix="use more groups or set a split fraction to 0",
                )
            ]
        )
    targets = np.array(fractions) * len(keys)
    filled = np.zeros(3)
    assignment = np.empty(len(unique), dtype=object)
    # Make sure each non-empty split gets a group first, then fill by deficit.
    order = list(rng.permutation(len(unique)))
    for split_index, fraction in enumerate(fractions):
        if fraction > 0:
            group = order.pop(0)
            assignment[group] = SPLITS[split_index]
            filled[split_index] += sizes[group]
    for group in order:
        deficit = np.where(np.array(fractions) > 0, (targets - filled) / np.maximum(targets, 1), -np.inf)
        split_index = int(np.argmax(deficit))
        assignment[group] = SPLITS[split_index]
        filled[split_index] += sizes[group]
    return assignment[inverse]


def _cut(n: int, fractions: tuple[float, float, float]) -> list[int]:
    raw = np.array(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    # A stratum with a few rows still feeds training first.
    if n > 0 and counts[0] == 0:
        donor = int(np.argmax(counts))
        counts[donor] -= 1
        counts[0] += 1
    return [int(c) for c in counts]


def empty_split_problems(splits: pd.Series, cfg: SplitConfig) -> list[Problem]:
    """An empty split the config did not ask for: training silently without validation, or evaluating
    on no test rows, is refused. A share of 0 in `fractions` (or `val_fraction_of_train: 0` with a split
    column) asks for it; with a split column, the column decides whether there are test rows."""
    counts = {name: int((splits == name).sum()) for name in SPLITS}
    if cfg.strategy == "column":
        wanted = {"train": True, "val": cfg.val_fraction_of_train > 0, "test": False}
    else:
        wanted = {name: share > 0 for name, share in zip(SPLITS, cfg.fractions, strict=True)}
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    how = (
        "put rows named 'val' in the split column, or set split.val_fraction_of_train"
        if cfg.strategy == "column"
        else f"use a table with more rows or larger split.fractions (now {list(cfg.fractions)}); a share "
        "of 0 leaves that split empty on purpose"
    )
    return [
        Problem(
            f"the {SPLIT_TITLES[name]} split is empty ({len(splits)} rows: {shown})",
            fix=f"polyfuse needs {name} rows to {'train' if name == 'train' else 'score the model'}: {how}",
        )
        for name in SPLITS
        if wanted[name] and counts[name] == 0
    ]
