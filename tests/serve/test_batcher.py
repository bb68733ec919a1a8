"""The micro-batcher on its own: when a batch waits for company and when it does not (no model, no HTTP)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from polyfuse.serve.batcher import MicroBatcher
from polyfuse.serve.settings import Batching

LONG_WAIT_MS = 60_000  # a wait no test could sit out
ANSWER_WITHIN_S = 20.0  # far below LONG_WAIT_MS: a request answered in time never sat out the wait


def recording(settings: Batching) -> tuple[MicroBatcher[str, str], list[list[str]]]:
    batches: list[list[str]] = []
    lock = threading.Lock()

    def run(payloads: list[str]) -> list[str]:
        with lock:
            batches.append(list(payloads))
        return [p.upper() for p in payloads]

    return MicroBatcher(run, settings), batches


def admitted(
    batcher: MicroBatcher[str, str], payload: str, delay_s: float = 0.0
) -> Callable[[], Coroutine[Any, Any, str]]:
    """A coroutine factory: one request admitted now, queued after `delay_s` (reading and decoding)."""
    assert batcher.try_admit()

    async def request() -> str:
        try:
            await asyncio.sleep(delay_s)
            return await batcher.submit(payload, 1, ANSWER_WITHIN_S)
        finally:
            batcher.release()

    return request


def test_a_request_alone_in_the_server_runs_without_waiting_for_company() -> None:
    batcher, batches = recording(Batching(max_wait_ms=LONG_WAIT_MS))
    try:

        async def one_after_another() -> list[str]:
            return [await admitted(batcher, payload)() for payload in ("a", "b", "c")]

        assert asyncio.run(one_after_another()) == ["A", "B", "C"]
        assert batches == [["a"], ["b"], ["c"]]
        assert batcher.pending == 0
    finally:
        batcher.close()


def test_a_request_waits_for_others_admitted_with_it_and_shares_their_pass() -> None:
    batcher, batches = recording(Batching(max_wait_ms=LONG_WAIT_MS, max_batch_rows=3))
    try:

        async def three() -> list[str]:
            # all three are admitted at once; two are still being decoded when the first is queued
            requests = [admitted(batcher, "a"), admitted(batcher, "b", 0.1), admitted(batcher, "c", 0.2)]
            return list(await asyncio.gather(*(r() for r in requests)))

        assert asyncio.run(three()) == ["A", "B", "C"]
        assert batches == [["a", "b", "c"]]  # one forward pass, closed when full
    finally:
        batcher.close()


def test_the_wait_for_company_ends_at_max_wait() -> None:
    batcher, batches = recording(Batching(max_wait_ms=50, max_batch_rows=8))
    try:

        async def two_far_apart() -> list[str]:
            requests = [admitted(batcher, "a"), admitted(batcher, "b", 1.0)]
            return list(await asyncio.gather(*(r() for r in requests)))

        assert asyncio.run(two_far_apart()) == ["A", "B"]
        assert batches == [["a"], ["b"]]  # the first did not wait 1 s for the second
    finally:
        batcher.close()


def test_admission_is_bounded_and_released() -> None:
    batcher, _ = recording(Batching(max_pending=3))
    try:
        assert all(batcher.try_admit() for _ in range(3))
        assert not batcher.try_admit()  # full: the caller answers 503
        batcher.release()
        assert batcher.try_admit()
    finally:
        batcher.close()
