"""Errors a client gets: an HTTP status and `{"error": {"code", "message", "request_id", "problems"}}`.

Never a traceback, never a server path: unexpected exceptions become a bare 500 whose details go to the
log under the request id.
"""

from __future__ import annotations

from typing import Any

from polyfuse.data.errors import DataError, Problem

# The status for a problem kind: a limit is 413, a format we do not take is 415, the rest 422.
STATUS_BY_KIND = {"too_large": 413, "unsupported": 415, "invalid": 422}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        problems: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems or []
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "request_id": request_id}
        if self.problems:
            error["problems"] = self.problems
        return {"error": error}


def problem_json(problem: Problem) -> dict[str, Any]:
    """A data problem for a client: row, column (the field), message and fix; the cell is never echoed."""
    out: dict[str, Any] = {"message": problem.message, "kind": problem.kind}
    if problem.row is not None:
        out["row"] = problem.row
    if problem.column is not None:
        out["field"] = problem.column
    if problem.fix:
        out["fix"] = problem.fix
    return out


def from_data_error(error: DataError) -> ApiError:
    """413 if any problem is over a limit, else 415 for a refused format, else 422; every problem listed."""
    kinds = {p.kind for p in error.problems}
    kind = "too_large" if "too_large" in kinds else "unsupported" if "unsupported" in kinds else "invalid"
    where = error.problems[0]
    field = f" (row {where.row}, field '{where.column}')" if where.column is not None else ""
    message = f"{len(error.problems)} problem(s) in the rows; first{field}: {where.message}"
    return ApiError(STATUS_BY_KIND[kind], kind, message, [problem_json(p) for p in error.problems])
