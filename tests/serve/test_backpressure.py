"""A full queue answers 503 at once with Retry-After; a request not answered in time gets 504."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from polyfuse.serve import Batching, ServeSettings, create_app
from polyfuse.serve.engine import Engine


def _hold_forward(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> threading.Event:
    """Make the model wait for `release` in its forward pass; the returned event is set once it waits."""
    entered = threading.Event()
    forward = engine.forward

    def held(requests: list[Any]) -> Any:
        entered.set()
        release.wait(timeout=30)
        return forward(requests)

    monkeypatch.setattr(engine, "forward", held)
    return entered


def test_full_queue_gets_503_with_retry_after_and_the_held_request_still_succeeds(
    model_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServeSettings(batching=Batching(max_pending=1, max_batch_rows=64))
    release = threading.Event()
    with TestClient(create_app(model_dir, settings, engine)) as client:
        entered = _hold_forward(engine, monkeypatch, release)
        first: dict[str, int] = {}
        holder = threading.Thread(
            target=lambda: first.update(status=client.post("/v1/predict", json={"rows": [{}]}).status_code)
        )
        holder.start()
        try:
            assert entered.wait(timeout=30)  # the first request is now in the model: the queue is full
            started = time.perf_counter()
            refused = client.post("/v1/predict", json={"rows": [{}]})
            assert time.perf_counter() - started < 0.5  # refused at once, not after the held request
        finally:
            release.set()
            holder.join()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert first["status"] == 200
        assert 'polyfuse_rejected_total{reason="queue_full"} 1.0' in client.get("/metrics").text


def test_request_not_answered_in_time_gets_504(
    model_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServeSettings(batching=Batching(max_batch_rows=64, request_timeout_s=0.3))
    release = threading.Event()
    with TestClient(create_app(model_dir, settings, engine)) as client:
        _hold_forward(engine, monkeypatch, release)
        try:
            response = client.post("/v1/predict", json={"rows": [{}]})
        finally:
            release.set()
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        assert client.get("/healthz").status_code == 200
