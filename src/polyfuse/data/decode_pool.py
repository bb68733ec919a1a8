"""Validation's decoding on several processes, each file under a time limit.

A decoder that never returns (a malformed chunk can send a C decoder into an endless loop, out of reach of
any Python exception or signal handler) must cost one row, not the run. So rows are decoded in worker
processes; each worker writes (row, input, start time) to shared memory before each cell, and the parent
kills a worker whose cell has run past the limit, reports that row's cell as the problem, and starts a new
worker for the rows that remain. A worker that dies (a decoder crash) is reported the same way.

Workers send the features they compute with each row's answer and the parent writes them to the feature
store, so a killed worker loses only the row it was stopped on, and a pass still writes a few large packs.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import torch

from polyfuse.data.errors import Problem
from polyfuse.data.preprocess import Preprocessor, media_file_name

Record = Mapping[str, Any]
# One row's problems, found by `check` (polyfuse.data.validate.check_row with its table bound).
RowCheck = Callable[[Preprocessor, Record, Callable[[str], None]], list[Problem]]

ROWS_PER_TASK = 8  # rows sent to a worker at once: fewer round trips, little lost when one is killed
_ROW, _INPUT, _STARTED = 0, 1, 2  # fields of a worker's shared status; _STARTED 0.0: between cells


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    status: Any  # multiprocessing.Array of 3 doubles, written by the worker
    rows: deque[int] = field(default_factory=deque)  # sent and not yet answered, in order


def decode_rows(
    preprocessor: Preprocessor,
    records: Sequence[Record],
    rows: Sequence[int],
    check: RowCheck,
    *,
    workers: int,
    time_limit_s: float,
    progress: Callable[[int], None] | None = None,
) -> dict[int, list[Problem]]:
    """Row → its problems, for each of `rows`, checked on `workers` processes, `time_limit_s` per cell."""
    context = _context()
    names = list(preprocessor.inputs)
    pending = deque(rows)
    results: dict[int, list[Problem]] = {}
    pool: list[_Worker] = []
    preprocessor.cache.flush()  # nothing waiting may be inherited by the workers

    def start() -> _Worker:
        parent_end, child_end = context.Pipe()
        status = context.Array("d", 3, lock=False)
        process = context.Process(  # type: ignore[attr-defined]
            target=_work,
            args=(child_end, status, preprocessor, records, check, names),
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Worker(process, parent_end, status)

    def answered(row: int, problems: list[Problem]) -> None:
        results[row] = problems
        if progress is not None:
            progress(1)

    def lost(worker: _Worker, message: str, fix: str) -> None:
        """The worker is gone: its current row gets the problem, the rest of its rows go back."""
        row = worker.rows.popleft()
        started = worker.status[_STARTED] > 0 and int(worker.status[_ROW]) == row
        column = names[int(worker.status[_INPUT])] if started else None
        file = media_file_name(records[row].get(column)) if column is not None else None
        answered(row, [Problem(message, row=row, column=column, file=file, fix=fix)])
        pending.extendleft(reversed(worker.rows))
        worker.conn.close()
        pool.remove(worker)

    poll_s = min(0.2, time_limit_s / 4)
    try:
        while pending or any(w.rows for w in pool):
            while pending and len(pool) < min(workers, len(pending) + len(pool)):
                pool.append(start())
            for worker in pool:
                if not worker.rows and pending:
                    task = [pending.popleft() for _ in range(min(ROWS_PER_TASK, len(pending)))]
                    worker.rows.extend(task)
                    worker.conn.send(task)
            busy = [w for w in pool if w.rows]
            for ready in wait([w.conn for w in busy], timeout=poll_s):
                worker = next(w for w in busy if w.conn is ready)
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(5)
                    lost(
                        worker,
                        f"the decoder crashed (worker exit code {worker.process.exitcode})",
                        "check the file (re-encode it, e.g. with ffmpeg) or drop the row (--drop-invalid)",
                    )
                    continue
                if message[0] == "crash":  # an exception that is not a data problem: a bug to report
                    raise RuntimeError(f"row {message[1]}: decoding failed unexpectedly\n{message[2]}")
                row, problems, hits, misses, computed = message[1:]
                preprocessor.cache.hits += hits  # counted per row: a worker may be killed before its end
                preprocessor.cache.misses += misses
                preprocessor.cache.add_pending(computed)
                worker.rows.remove(row)
                answered(row, problems)
            now = time.monotonic()
            for worker in [w for w in pool if w.rows]:
                started = worker.status[_STARTED]
                if started > 0 and now - started > time_limit_s:
                    worker.process.kill()
                    worker.process.join()
                    lost(
                        worker,
                        f"decoding did not finish within {time_limit_s:g} s and was stopped",
                        "check the file (a damaged file can make a decoder hang): re-encode it, drop the row "
                        "(--drop-invalid), or raise data.decode_timeout_s if the file is just slow to decode",
                    )
        for worker in pool:
            worker.conn.send(None)  # exit
        for worker in pool:
            worker.process.join()
    finally:
        for worker in pool:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
            worker.conn.close()
    return results


def _context() -> BaseContext:
    # On Linux fork starts a worker in milliseconds with everything already imported; elsewhere spawn
    # (macOS system libraries are not safe to use after fork, Windows has none).
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def _work(
    conn: Connection,
    status: Any,
    preprocessor: Preprocessor,
    records: Sequence[Record],
    check: RowCheck,
    names: list[str],
) -> None:
    torch.set_num_threads(1)  # one process per core
    # a tokenizer the parent used before the fork would warn at its first use here, and must not thread
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache = preprocessor.cache
    input_index = {name: float(i) for i, name in enumerate(names)}
    current = [0.0]

    def on_cell(name: str) -> None:
        status[_STARTED] = 0.0
        status[_ROW] = current[0]
        status[_INPUT] = input_index[name]
        status[_STARTED] = time.monotonic()  # last: the parent times the cell from here

    with cache.batch_writes():
        while (task := conn.recv()) is not None:
            for row in task:
                current[0] = float(row)
                hits, misses = cache.hits, cache.misses
                try:
                    problems = check(preprocessor, records[row], on_cell)
                except Exception:
                    conn.send(("crash", row, traceback.format_exc()))
                    return
                status[_STARTED] = 0.0
                computed = cache.take_pending()  # the parent writes it
                conn.send(("row", row, problems, cache.hits - hits, cache.misses - misses, computed))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
