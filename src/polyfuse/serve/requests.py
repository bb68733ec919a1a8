"""Request bodies → rows (column → value), as pure functions tested apart from HTTP.

JSON: `{"rows": [{"<column>": value, ...}, ...]}`; text as strings, images and audio as base64 strings.
Multipart: one part per column named by the column (one row), or `rows[<i>][<column>]` for several rows;
media as file parts (their file names are ignored) or base64 text parts. Any column may be absent.

Pydantic models for the body and the answer are generated from the model's input schema, so
`/openapi.json` names the real fields.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from polyfuse.data.preprocess import TargetSpec
from polyfuse.data.schema import Modality
from polyfuse.serve.errors import ApiError
from polyfuse.serve.settings import Limits

Row = dict[str, Any]
_MULTIPART_NAME = re.compile(r"^rows\[(\d{1,6})\]\[(.+)\]$")


def _field_type(column: str, modality: Modality) -> tuple[Any, Any]:
    """(annotation, Field) of one column; strict, so a number is never taken for text or the reverse."""
    if modality is Modality.NUMERIC:
        return StrictFloat | StrictInt | None, Field(None, alias=column, description="number")
    if modality is Modality.CATEGORY:
        return StrictStr | StrictInt | None, Field(None, alias=column, description="string or integer")
    if modality is Modality.TEXT:
        return StrictStr | None, Field(None, alias=column, description="text")
    description = f"the {modality.value} file's bytes, base64 (or a data: URI)"
    return StrictStr | None, Field(None, alias=column, description=description)


def row_model(columns: dict[str, Modality]) -> type[BaseModel]:
    """A row: every input column optional, nothing else allowed. Fields are aliased: column names need
    not be Python identifiers."""
    fields: dict[str, Any] = {}
    for i, (column, modality) in enumerate(columns.items()):
        fields[f"field_{i}"] = _field_type(column, modality)
    return create_model("Row", __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)


def request_model(columns: dict[str, Modality], limits: Limits) -> type[BaseModel]:
    row = row_model(columns)
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        rows=(list[row], Field(min_length=1, max_length=limits.max_rows)),  # type: ignore[valid-type]
    )


def response_model(specs: dict[str, TargetSpec]) -> type[BaseModel]:
    per_target: dict[str, Any] = {}
    for i, (target, spec) in enumerate(specs.items()):
        prediction: Any = {"classification": str, "multilabel": list[str], "regression": float}[spec.task]
        fields: dict[str, Any] = {"prediction": (prediction, ...)}
        if spec.task != "regression":
            fields["probabilities"] = (dict[str, float], Field(..., description="class → probability"))
        model = create_model(f"Target{i}Prediction", **fields)
        per_target[f"field_{i}"] = (model, Field(..., alias=target))
    prediction_row = create_model("RowPrediction", **per_target)
    return create_model(
        "PredictResponse",
        request_id=(str, ...),
        predictions=(list[prediction_row], Field(..., description="one per row, in request order")),
    )


# --- JSON -------------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_json(body: bytes) -> Any:
    """Strict JSON: no NaN / Infinity, no out-of-range numbers; nesting too deep or bad UTF-8 → 400."""
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ApiError(400, "malformed_json", "the JSON is nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the body is not UTF-8") from None
    except ValueError as e:  # JSONDecodeError, and int() over 4300 digits
        raise ApiError(400, "malformed_json", f"invalid JSON: {str(e)[:200]}") from None


def rows_from_json(document: Any, model: type[BaseModel], limits: Limits) -> list[Row]:
    rows = document.get("rows") if isinstance(document, dict) else None
    if isinstance(rows, list) and len(rows) > limits.max_rows:
        raise _too_many_rows(len(rows), limits)
    try:
        parsed = model.model_validate(document)
    except ValidationError as e:
        raise validation_error(e) from None
    return [row.model_dump(by_alias=True, exclude_none=True) for row in parsed.rows]  # type: ignore[attr-defined]


def validation_error(error: ValidationError) -> ApiError:
    """422 listing each bad field with its row; input values are never echoed."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        loc = list(item["loc"])
        problem: dict[str, Any] = {"message": item["msg"], "kind": "invalid"}
        if len(loc) >= 2 and loc[0] == "rows" and isinstance(loc[1], int):
            problem["row"] = loc[1]
            if len(loc) >= 3:
                problem["field"] = str(loc[2])
        elif loc:
            problem["field"] = ".".join(str(part) for part in loc)
        problems.append(problem)
    first = problems[0] if problems else {"message": "invalid body"}
    where = f"field '{first['field']}'" if "field" in first else "body"
    if "row" in first:
        where = f"row {first['row']}, {where}"
    return ApiError(
        422, "invalid", f"{len(problems)} problem(s); first ({where}): {first['message']}", problems
    )


def _too_many_rows(count: int, limits: Limits) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"{count} rows is over the limit of {limits.max_rows} rows per request; send them in several requests",
        [{"field": "rows", "kind": "too_large", "message": f"at most {limits.max_rows} rows"}],
    )


# --- multipart --------------------------------------------------------------------------------------


def rows_from_form(
    parts: list[tuple[str, str | bytes]], columns: dict[str, Modality], limits: Limits
) -> list[Row]:
    """(part name, text or file bytes) → rows. Names are `column` (row 0) or `rows[i][column]`."""
    cells: dict[int, Row] = {}
    problems: list[dict[str, Any]] = []
    for name, value in parts:
        match = _MULTIPART_NAME.match(name)
        row, column = (int(match.group(1)), match.group(2)) if match else (0, name)
        if column not in columns:
            problems.append(
                {
                    "field": column[:100],
                    "row": row,
                    "kind": "invalid",
                    "message": f"unknown field; this model's fields are {sorted(columns)}",
                }
            )
            continue
        if column in cells.get(row, {}):
            problems.append({"field": column, "row": row, "kind": "invalid", "message": "field sent twice"})
            continue
        try:
            cells.setdefault(row, {})[column] = _form_value(value, columns[column])
        except ValueError as e:
            problems.append({"field": column, "row": row, "kind": "invalid", "message": str(e)})
    if problems:
        raise ApiError(
            422,
            "invalid",
            f"{len(problems)} problem(s) in the form; first: {problems[0]['message']}",
            problems,
        )
    count = max(cells, default=-1) + 1
    if count > limits.max_rows:
        raise _too_many_rows(count, limits)
    if count == 0:
        raise ApiError(422, "invalid", f"the form holds no fields; this model's fields are {sorted(columns)}")
    return [cells.get(i, {}) for i in range(count)]


def _form_value(value: str | bytes, modality: Modality) -> Any:
    if modality in (Modality.IMAGE, Modality.AUDIO):
        return value  # bytes from a file part, or base64 text: both are data, never a path
    if isinstance(value, bytes):
        raise ValueError(f"a {modality.value} field is a plain form field, not a file")
    if modality is Modality.NUMERIC:
        if not value.strip():
            return None
        try:
            return _finite_float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    return value if value != "" else None
