"""Dynamic micro-batching: requests that arrive close together share one forward pass.

One thread owns the model. It takes the oldest waiting request, then keeps taking requests until the batch
holds `max_batch_rows` rows or the oldest has waited `max_wait_ms`, runs them as one batch, and hands each
request back exactly its own rows (slices by position; a request is never split across two batches
unless it alone is larger than a batch, and is then run alone). A request that timed out before its turn
is dropped from the queue instead of run. With batching disabled every request runs alone.

Admission (the bounded queue) is counted by the caller with `try_admit` / `release`, so a full server
answers 503 before reading or decoding anything.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from polyfuse.serve.settings import Batching

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Job(Generic[Item, Result]):
    rows: int
    payload: Item
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # set by the event loop when the caller stopped waiting (timeout)


_STOP = object()


class MicroBatcher(Generic[Item, Result]):
    """`run(list of payloads) -> list of results` (same order) is called on the batching thread only."""

    def __init__(
        self,
        run: Callable[[list[Item]], list[Result]],
        settings: Batching,
        on_batch: Callable[[int, int], None] = lambda rows, requests: None,
    ) -> None:
        self._run = run
        self.settings = settings
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._carry: _Job[Item, Result] | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="polyfuse-batcher", daemon=True)
        self._thread.start()

    # --- admission (event loop) ---------------------------------------------------------------------
    def try_admit(self) -> bool:
        with self._lock:
            if self._pending >= self.settings.max_pending:
                return False
            self._pending += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    async def submit(self, payload: Item, rows: int, timeout: float) -> Result:
        """Queue one request; its result, or TimeoutError after `timeout` seconds (then never run)."""
        loop = asyncio.get_running_loop()
        job: _Job[Item, Result] = _Job(rows, payload, loop.create_future(), loop)
        self._queue.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except (TimeoutError, asyncio.CancelledError):
            job.abandoned = True
            raise

    def close(self) -> None:
        """Finish everything queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    # --- the batching thread ------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> Any:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return self._queue.get()
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._next(None)
            if first is _STOP:
                break
            batch, rows = [first], first.rows
            deadline = first.queued_at + self.settings.max_wait_ms / 1000
            while self.settings.enabled and rows < self.settings.max_batch_rows:
                try:
                    job = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True  # run what we hold, then stop
                    break
                if rows + job.rows > self.settings.max_batch_rows:
                    self._carry = job  # first of the next batch
                    break
                batch.append(job)
                rows += job.rows
            self._execute(batch)
            if stopping and self._carry is not None:
                self._execute([self._carry])
                self._carry = None
        # drain anything still queued behind the stop marker (nothing should be: the server stopped
        # accepting before closing us), answering rather than dropping it
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not _STOP:
                self._execute([job])

    def _execute(self, batch: list[_Job[Item, Result]]) -> None:
        live = [job for job in batch if not job.abandoned]
        if not live:
            return
        self._on_batch(sum(job.rows for job in live), len(live))
        try:
            results = self._run([job.payload for job in live])
        except BaseException as e:  # a bug in the model code: every caller gets it, the thread lives on
            for job in live:
                job.loop.call_soon_threadsafe(_set_exception, job.future, e)
            return
        for job, result in zip(live, results, strict=True):
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
