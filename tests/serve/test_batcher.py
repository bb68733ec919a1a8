"""The micro-batcher on its own: when a batch closes, and what admission counts (no model, no HTTP)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from polyfuse.serve.batcher import MicroBatcher
from polyfuse.serve.settings import Batching

LONG_WAIT = Batching(max_wait_ms=60_000, max_batch_rows=8, max_pending=3)  # a wait no test could sit out
ANSWER_WITHIN_S = 20.0  # far below LONG_WAIT: a request answered in time never sat out the wait


@pytest.fixture
def recorded() -> Iterator[tuple[MicroBatcher[str, str], list[list[str]]]]:
    batches: list[list[str]] = []
    lock = threading.Lock()

    def run(payloads: list[str]) -> list[str]:
        with lock:
            batches.append(list(payloads))
        return [p.upper() for p in payloads]

    batcher: MicroBatcher[str, str] = MicroBatcher(run, LONG_WAIT)
    yield batcher, batches
    batcher.close()


def test_a_lone_request_runs_without_waiting_for_company(
    recorded: tuple[MicroBatcher[str, str], list[list[str]]],
) -> None:
    batcher, batches = recorded

    async def lone() -> str:
        ticket = batcher.try_admit()
        assert ticket is not None
        try:
            return await batcher.submit(ticket, "a", 1, ANSWER_WITHIN_S)
        finally:
            batcher.release(ticket)

    assert asyncio.run(lone()) == "A"
    assert batches == [["a"]]
    assert batcher.pending == 0


def test_a_batch_waits_for_admitted_requests_still_decoding(
    recorded: tuple[MicroBatcher[str, str], list[list[str]]],
) -> None:
    batcher, batches = recorded

    async def two() -> list[str]:
        first, second = batcher.try_admit(), batcher.try_admit()
        assert first is not None and second is not None

        async def later() -> str:
            await asyncio.sleep(0.2)  # the second request is still being decoded when the first queues
            return await batcher.submit(second, "b", 1, ANSWER_WITHIN_S)

        try:
            return list(await asyncio.gather(batcher.submit(first, "a", 1, ANSWER_WITHIN_S), later()))
        finally:
            batcher.release(first)
            batcher.release(second)

    assert asyncio.run(two()) == ["A", "B"]
    assert batches == [["a", "b"]]  # one forward pass: the first waited for the second


def test_a_request_refused_before_queueing_does_not_hold_the_batch(
    recorded: tuple[MicroBatcher[str, str], list[list[str]]],
) -> None:
    batcher, batches = recorded

    async def one_refused() -> str:
        first, refused = batcher.try_admit(), batcher.try_admit()
        assert first is not None and refused is not None

        async def refuse_later() -> None:
            await asyncio.sleep(0.2)
            batcher.release(refused)  # e.g. its rows were invalid: 422, never queued

        try:
            answer, _ = await asyncio.gather(batcher.submit(first, "a", 1, ANSWER_WITHIN_S), refuse_later())
            return answer
        finally:
            batcher.release(first)

    assert asyncio.run(one_refused()) == "A"
    assert batches == [["a"]]


def test_admission_is_bounded_and_released() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(lambda payloads: payloads, LONG_WAIT)
    try:
        tickets = [batcher.try_admit() for _ in range(LONG_WAIT.max_pending)]
        assert all(t is not None for t in tickets)
        assert batcher.try_admit() is None  # full: the caller answers 503
        first = tickets[0]
        assert first is not None
        batcher.release(first)
        assert batcher.try_admit() is not None
    finally:
        batcher.close()
