"""A full queue answers 503 at once with Retry-After; a request not answered in time gets 504."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from polyfuse.serve import Batching, ServeSettings, create_app
from polyfuse.serve.engine import Engine


def test_full_queue_gets_503_with_retry_after_and_the_held_request_still_succeeds(
    model_dir: Path, engine: Engine
) -> None:
    settings = ServeSettings(batching=Batching(max_pending=1, max_wait_ms=1000, max_batch_rows=64))
    with TestClient(create_app(model_dir, settings, engine)) as client:
        first: dict[str, int] = {}
        holder = threading.Thread(
            target=lambda: first.update(status=client.post("/v1/predict", json={"rows": [{}]}).status_code)
        )
        holder.start()
        time.sleep(0.3)  # the first request now waits in the batcher for company
        started = time.perf_counter()
        refused = client.post("/v1/predict", json={"rows": [{}]})
        assert time.perf_counter() - started < 0.5  # refused at once, not after the wait
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        holder.join()
        assert first["status"] == 200
        assert 'polyfuse_rejected_total{reason="queue_full"} 1.0' in client.get("/metrics").text


def test_request_not_answered_in_time_gets_504(model_dir: Path, engine: Engine) -> None:
    settings = ServeSettings(batching=Batching(max_wait_ms=2000, max_batch_rows=64, request_timeout_s=0.3))
    with TestClient(create_app(model_dir, settings, engine)) as client:
        response = client.post("/v1/predict", json={"rows": [{}]})
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        assert client.get("/healthz").status_code == 200
