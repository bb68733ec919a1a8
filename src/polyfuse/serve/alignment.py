"""The endpoints of the non-supervised objectives: POST /v1/embed (contrastive), /v1/consistency
(matching) and /v1/search (contrastive, over an index given with `--index DIR`).

Each answers what the `Predictor` method of the same name answers for the same rows: `embed` and
`embed_inputs`, `consistency`, and `search` (one query row at a time, as `Predictor.search` takes them).
A model whose objectives cannot do what a route asks gets a 404 naming the objective it lacks.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, create_model

from polyfuse.data.errors import DataError, Problem
from polyfuse.data.table import read_table
from polyfuse.retrieval import Index
from polyfuse.serve.app import add_inference_route, add_unsupported_route
from polyfuse.serve.engine import Engine, RequestOutputs, Row
from polyfuse.serve.errors import ApiError
from polyfuse.serve.observability import LOGGER

MAX_K = 1000  # hits per query


def _floats(vector: Any) -> list[float] | None:
    """A float32 vector as JSON numbers (each float32 is exactly a float64), None if it holds NaN."""
    values: list[float] = vector.tolist()
    return None if any(math.isnan(v) for v in values) else values


# --- /v1/embed --------------------------------------------------------------------------------------


class RowEmbedding(BaseModel):
    embedding: list[float] | None = Field(
        description="the row's vector, as Predictor.embed(rows) gives it (null when no input is present)"
    )
    inputs: dict[str, list[float] | None] = Field(
        description="each aligned input's L2-normalised vector in the shared space, as "
        "Predictor.embed(rows, modality=input) gives it (null where the row lacks the input)"
    )


class EmbedResponse(BaseModel):
    request_id: str
    embeddings: list[RowEmbedding] = Field(description="one per row, in request order")


def embeddings(engine: Engine, outputs: RequestOutputs, _: Any) -> list[dict[str, Any]]:
    objective = engine.predictor.model.objectives_for("embed")[0]
    aligned = engine.predictor._aligned()
    rows = []
    for i in range(len(outputs.outputs["embedding"])):
        per_input = {
            name: _floats(outputs.outputs[f"{objective}:embedding/{name}"][i])
            if bool(outputs.present[name][i])
            else None
            for name in aligned.inputs
        }
        rows.append({"embedding": _floats(outputs.outputs["embedding"][i]), "inputs": per_input})
    return rows


# --- /v1/consistency --------------------------------------------------------------------------------


class RowConsistency(BaseModel):
    consistency: float | None = Field(
        description="probability that the row's inputs belong together; null with fewer than two of the "
        "inputs the matching objective judges"
    )


class ConsistencyResponse(BaseModel):
    request_id: str
    scores: list[RowConsistency] = Field(description="one per row, in request order")


def consistency(engine: Engine, outputs: RequestOutputs, _: Any) -> list[dict[str, Any]]:
    objective = engine.predictor.model.objectives_for("consistency")[0]
    values = outputs.outputs[f"{objective}:consistency"].tolist()
    return [{"consistency": None if math.isnan(v) else v} for v in values]


# --- /v1/search -------------------------------------------------------------------------------------


class Hit(BaseModel):
    rank: int = Field(description="1 = nearest")
    score: float = Field(description="cosine similarity")
    row: int = Field(description="the hit's position in the indexed table")
    fields: dict[str, Any] = Field(description="the indexed table's cells of that row")


class QueryHits(BaseModel):
    query: str = Field(description="the input the query row holds")
    target: str = Field(description="the indexed input searched")
    hits: list[Hit]


class SearchResponse(BaseModel):
    request_id: str
    results: list[QueryHits] = Field(description="one per query row, in request order")


class SearchIndex:
    """An index loaded once, with the table cells its hits return."""

    def __init__(self, directory: Path, engine: Engine) -> None:
        self.index = Index.load(directory)
        aligned = engine.predictor._aligned()
        self.aligned_inputs: list[str] = list(aligned.inputs)
        self.objective = engine.predictor.model.objectives_for("search")[0]
        _check_built_by(self.index, engine, aligned.embed_dim)
        table = self.index.table
        self.cells: list[dict[str, Any]] = []
        if table.exists():
            frame = read_table(table, encoding=engine.predictor.config.data.encoding).frame
            self.cells = [_json_cells(record) for record in frame.to_dict("records")]
        else:
            logging.getLogger(LOGGER).warning(
                "the index's table is gone: hits carry no fields",
                extra={"fields": {"event": "index_table_missing", "table": str(table)}},
            )

    @property
    def targets(self) -> list[str]:
        return sorted(self.index.collections)

    def parameters(self) -> type[BaseModel]:
        target: Any = Literal[tuple(self.targets)]
        return create_model(
            "SearchParameters",
            __config__=ConfigDict(extra="forbid"),
            k=(int, Field(10, ge=1, le=MAX_K, description="hits per query")),
            target=(
                target | None,
                Field(
                    None,
                    description="the indexed input to search (default: the only indexed input other than "
                    "the query's)",
                ),
            ),
        )

    def check(self, engine: Engine, rows: list[Row], parameters: Any) -> None:
        """Each query row holds exactly one aligned input, and its target is known: else 422 by row."""
        problems = []
        for i, row in enumerate(rows):
            given = [name for name, value in row.items() if value is not None]
            if len(given) != 1 or given[0] not in self.aligned_inputs:
                problems.append(
                    {
                        "row": i,
                        "field": given[0] if len(given) == 1 else "rows",
                        "kind": "invalid",
                        "message": f"a query row holds exactly one of the aligned inputs "
                        f"{self.aligned_inputs}, got {given or 'none'}",
                    }
                )
            elif parameters.target is None and len(self._default_targets(given[0])) != 1:
                problems.append(
                    {
                        "row": i,
                        "field": "target",
                        "kind": "invalid",
                        "message": f"choose the input to search with ?target=: the index holds {self.targets}",
                    }
                )
        if problems:
            raise ApiError(
                422,
                "invalid",
                f"{len(problems)} problem(s); first (row {problems[0]['row']}): {problems[0]['message']}",
                problems,
            )

    def _default_targets(self, source: str) -> list[str]:
        return [n for n in self.targets if n != source]

    def answer(self, engine: Engine, outputs: RequestOutputs, parameters: Any) -> list[dict[str, Any]]:
        results = []
        for i in range(len(next(iter(outputs.present.values())))):
            source = next(n for n in self.aligned_inputs if bool(outputs.present[n][i]))
            target = parameters.target or self._default_targets(source)[0]
            vector = outputs.outputs[f"{self.objective}:embedding/{source}"][i : i + 1].numpy()  # (1, E)
            # one query at a time, as Predictor.search does: a (1, E) product sums in the same order
            scores, table_rows = self.index.search(vector, target, parameters.k)
            hits = [
                {
                    "rank": rank,
                    "score": float(score),
                    "row": int(row),
                    "fields": self.cells[int(row)] if self.cells else {},
                }
                for rank, (score, row) in enumerate(zip(scores[0], table_rows[0], strict=True), start=1)
            ]
            results.append({"query": source, "target": target, "hits": hits})
        return results


def _json_cells(record: dict[Any, Any]) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for column, value in record.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        cells[str(column)] = (
            value if value is None or isinstance(value, str | int | float | bool) else str(value)
        )
    return cells


def _check_built_by(index: Index, engine: Engine, embed_dim: int) -> None:
    """Refuse an index another model built: its vectors would not live in this model's space."""
    problems = []
    for name, collection in index.collections.items():
        if collection.vectors.shape[1] != embed_dim:
            problems.append(
                Problem(
                    f"the index's '{name}' vectors have {collection.vectors.shape[1]} dimensions, this "
                    f"model's shared space {embed_dim}",
                    file=str(index.directory),
                )
            )
    built_by = index.model_dir / "model.safetensors"
    served = engine.model_dir / "model.safetensors"
    if not problems and built_by.exists() and _digest(built_by) != _digest(served):
        problems.append(
            Problem(
                f"the index was built with another model ({index.model_dir})",
                file=str(index.directory),
                fix="build the index with the model you serve: polyfuse index build MODEL_DIR TABLE -o DIR",
            )
        )
    if problems:
        raise DataError(problems)


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- the routes -------------------------------------------------------------------------------------


def add_alignment_routes(app: FastAPI, engine: Engine, index_dir: Path | None) -> None:
    if engine.can("embed"):
        add_inference_route(
            app,
            "/v1/embed",
            "embeddings",
            embeddings,
            EmbedResponse,
            "Each row's vector and each aligned input's vector in the shared space (contrastive)",
        )
    else:
        add_unsupported_route(app, "/v1/embed", engine.missing("embed"))
    if engine.can("consistency"):
        add_inference_route(
            app,
            "/v1/consistency",
            "scores",
            consistency,
            ConsistencyResponse,
            "Probability that each row's inputs belong together (matching)",
        )
    else:
        add_unsupported_route(app, "/v1/consistency", engine.missing("consistency"))
    if not engine.can("search"):
        add_unsupported_route(app, "/v1/search", engine.missing("search"))
    elif index_dir is None:
        add_unsupported_route(
            app,
            "/v1/search",
            "this server has no index: start it with --index DIR, a folder written by "
            "`polyfuse index build MODEL_DIR TABLE -o DIR` with this model",
        )
    else:
        index = SearchIndex(index_dir, engine)
        add_inference_route(
            app,
            "/v1/search",
            "results",
            index.answer,
            SearchResponse,
            "The k indexed rows nearest to each query row (one input per query row)",
            parameters=index.parameters(),
            check_rows=index.check,
        )
