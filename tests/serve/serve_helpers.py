"""Helpers for the serving tests: request rows from a table."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import pandas as pd

INPUTS = ("text", "image", "audio", "amount", "colour")


def request_rows(table: Path, count: int | None = None) -> list[dict[str, Any]]:
    """The table's input cells as a client sends them: media base64, missing cells left out."""
    frame = pd.read_csv(table, keep_default_na=False, na_values=[""])
    rows = []
    for record in frame.to_dict("records")[:count]:
        row: dict[str, Any] = {}
        for column in INPUTS:
            value = record[column]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if column in ("image", "audio"):
                value = base64.b64encode((table.parent / value).read_bytes()).decode()
            row[column] = value
        rows.append(row)
    return rows
