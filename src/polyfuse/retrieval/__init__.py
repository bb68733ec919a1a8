"""Cross-modal search: embed a table into an index with a trained model, then query it with any input.

index_model(predictor, "data/av/av_digits.csv", "idx")          # polyfuse index build
search_index(predictor, "idx", {"audio": "7.wav"}, target="image")   # polyfuse search
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from polyfuse.data.errors import DataError, Problem
from polyfuse.data.table import read_table
from polyfuse.retrieval.index import FaissKind, Index, build_index, exact_top_k

if TYPE_CHECKING:
    from polyfuse.predict import Predictor

__all__ = ["Index", "build_index", "exact_top_k", "index_model", "search_index"]


def index_model(
    predictor: Predictor,
    table_path: Path,
    out: Path,
    *,
    inputs: list[str] | None = None,
    split: str | None = None,
    chunk_rows: int = 2048,
    faiss: FaissKind = "auto",
    faiss_min_rows: int = 50_000,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Embed every row of `table_path` (or of one split) with each aligned input (default: every input the
    model's contrastive objective aligns that the table holds) and write the index to `out`."""
    from polyfuse.commands import split_positions

    predictor._require("search")
    aligned = predictor._aligned()
    full, positions = split_positions(predictor, table_path, split)
    table = full.subset(positions)
    available = [n for n in aligned.inputs if n in table.frame.columns]
    chosen = inputs or available
    missing = [n for n in chosen if n not in available]
    if missing or not chosen:
        raise DataError(
            [
                Problem(
                    f"cannot index {missing or 'anything'}: the table's aligned inputs are {available}",
                    file=str(table_path),
                )
            ]
        )
    source = {
        "model": str(predictor.directory.resolve()),
        "table": str(Path(table_path).resolve()),
        "split": split,
    }

    def embed_chunk(rows: list[int]) -> dict[str, np.ndarray]:
        return predictor.embed_inputs(table.subset(rows), chosen)

    info = build_index(
        out,
        embed_chunk,
        positions,
        chosen,
        source,
        chunk_rows=chunk_rows,
        faiss=faiss,
        faiss_min_rows=faiss_min_rows,
        progress=progress,
        log=log,
    )
    return info


def search_index(
    predictor: Predictor, index: Index | Path | str, query: dict[str, Any], *, target: str | None, k: int
) -> pd.DataFrame:
    """Top-k rows of the index for one query row {input: value}; see `Predictor.search`."""
    index = index if isinstance(index, Index) else Index.load(index)
    given = [n for n, v in query.items() if v is not None]
    if len(given) != 1:
        raise DataError(f"a query holds exactly one input's value, got {given or 'none'}")
    source = given[0]
    if target is None:
        others = [n for n in index.collections if n != source]
        if len(others) != 1:
            raise ValueError(
                f"choose what to search with target=: the index holds {sorted(index.collections)}"
            )
        target = others[0]
    vector = predictor.embed_inputs([query], [source])[source]  # (1, E)
    if np.isnan(vector).any():
        raise DataError([Problem("the query could not be embedded (empty value)", column=source)])
    scores, rows = index.search(vector, target, k)
    table_rows = [int(r) for r in rows[0]]
    frame = pd.DataFrame({"rank": range(1, len(table_rows) + 1), "score": scores[0], "row": table_rows})
    table_path = Path(index.info["table"])
    if table_path.exists():
        source_rows = (
            read_table(table_path, encoding=predictor.config.data.encoding)
            .frame.iloc[table_rows]
            .reset_index(drop=True)
        )
        frame = pd.concat([frame, source_rows], axis=1)
    return frame
