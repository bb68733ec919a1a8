"""Errors that name the row, column and file at fault and say what to do about it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

# Why a value was refused, so that a server can answer 422 (invalid), 413 (over a size limit) or 415
# (a format that is not allowed) without parsing messages.
ProblemKind = Literal["invalid", "too_large", "unsupported"]


class MediaError(ValueError):
    """A single media value (image, audio, text) could not be used.

    Raised by the pure decode functions, which know nothing about rows or columns; the caller wraps it
    in a `Problem` that does.
    """

    def __init__(self, message: str, fix: str = "", kind: ProblemKind = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.kind: ProblemKind = kind


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a table, located as precisely as we can."""

    message: str
    row: int | None = None  # 0-based position in the table as read
    column: str | None = None
    file: str | None = None
    fix: str = ""
    kind: ProblemKind = "invalid"

    def at_row(self, row: int) -> Problem:
        """The same problem located at `row` (callers that know the row add it)."""
        return replace(self, row=row)

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.file is not None:
            where.append(f"file '{self.file}'")
        text = (", ".join(where) + ": " if where else "") + self.message
        return f"{text}. {self.fix}" if self.fix else text


class DataError(ValueError):
    """One or more problems with user data; the message lists every one of them."""

    def __init__(self, problems: Sequence[Problem] | str, max_listed: int = 20) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:max_listed]]
        if len(self.problems) > max_listed:
            lines.append(f"... and {len(self.problems) - max_listed} more problems")
        header = f"{len(self.problems)} problem(s) found:" if len(self.problems) > 1 else ""
        super().__init__("\n".join([header, *lines]) if header else lines[0])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'epochs'?)' for a near miss among `choices`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
