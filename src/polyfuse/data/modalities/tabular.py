"""Numeric and category columns: statistics and vocabularies fitted on the training split only."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from polyfuse.data.errors import MediaError
from polyfuse.data.media import is_missing

MISSING_ID = 0  # category id of an empty cell
UNKNOWN_ID = 1  # category id of a value not seen in training (or too rare to keep)


class NumericConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clip_std: float = Field(10.0, gt=0, description="standardised values are clipped to ±clip_std")


class CategoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(1, ge=1, description="values seen fewer times in training map to 'unknown'")
    max_size: int = Field(10_000, ge=1, description="keep at most this many most frequent values")


class NumericStats(BaseModel):
    """Mean and std of one numeric column over the training rows (missing cells ignored)."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: Iterable[object]) -> NumericStats:
        # Bad cells are skipped here and reported by validation, which names their rows.
        numbers = np.array([n for v in values if (n := _maybe_number(v)) is not None], dtype=np.float64)
        if numbers.size == 0:
            return cls(mean=0.0, std=1.0)
        std = float(numbers.std())
        return cls(mean=float(numbers.mean()), std=std if std > 1e-12 else 1.0)

    def transform(self, value: object, cfg: NumericConfig) -> float | None:
        """Standardised value, or None for a missing cell."""
        if is_missing(value):
            return None
        z = (to_number(value) - self.mean) / self.std
        return float(np.clip(z, -cfg.clip_std, cfg.clip_std))


class CategoryVocab(BaseModel):
    """Value → id; ids 0 and 1 are reserved for missing and unknown."""

    values: list[str]
    _index: dict[str, int] | None = PrivateAttr(default=None)

    @classmethod
    def fit(cls, cells: Iterable[object], cfg: CategoryConfig) -> CategoryVocab:
        counts = Counter(category_key(v) for v in cells if not is_missing(v))
        kept = [v for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= cfg.min_count]
        return cls(values=kept[: cfg.max_size])

    @property
    def size(self) -> int:
        """Embedding rows needed: the values plus missing and unknown."""
        return len(self.values) + 2

    def transform(self, value: object) -> int:
        if is_missing(value):
            return MISSING_ID
        if self._index is None:
            self._index = {v: i + 2 for i, v in enumerate(self.values)}
        index = self._index.get(category_key(value))
        return UNKNOWN_ID if index is None else index


def category_key(value: object) -> str:
    """Categories compare as text, so 3, 3.0 and '3' from CSV and JSON land in one bucket."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def to_number(value: object) -> float:
    """A cell as a finite float, or MediaError saying what was there."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MediaError(f"'{value}' is not a number", "fix the value or leave the cell empty") from None
    if not math.isfinite(number):
        raise MediaError(f"{value} is not a finite number", "fix the value or leave the cell empty")
    return number


def _maybe_number(value: object) -> float | None:
    if is_missing(value):
        return None
    try:
        return to_number(value)
    except MediaError:
        return None
