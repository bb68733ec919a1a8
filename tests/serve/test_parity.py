"""Served predictions are Predictor's predictions: bit for bit for a request run alone (JSON or multipart,
rows lacking modalities included); under micro-batching each request gets its own rows back."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import request_rows

import polyfuse
from polyfuse.serve import Batching, ServeSettings, create_app
from polyfuse.serve.app import INLINE_BYTES
from polyfuse.serve.engine import Engine


def _probabilities(answer: dict[str, Any]) -> np.ndarray:
    return np.array([[p for p in row["label"]["probabilities"].values()] for row in answer["predictions"]])


def test_json_predictions_equal_predictor_bit_for_bit(
    client: TestClient, model_dir: Path, served_table: Path
) -> None:
    rows = request_rows(served_table, 24)
    assert any(len(r) < 5 for r in rows), "the table should hold rows that lack a modality"
    rows.append({"image": rows[0]["image"]})  # image only
    rows.append({"text": "river boat"})  # text only
    rows.append({})  # nothing at all: the model still answers from its missing-input embeddings
    predictor = polyfuse.load(model_dir)
    expected = predictor.predict_proba(rows)
    response = client.post("/v1/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    answer = response.json()
    got = _probabilities(answer)
    assert np.array_equal(got, expected.to_numpy().astype(np.float64))  # float32 → JSON → float64, exact
    assert [r["label"]["prediction"] for r in answer["predictions"]] == predictor.predict(rows)[
        "label"
    ].tolist()
    assert list(answer["predictions"][0]["label"]["probabilities"]) == list(expected.columns)


def test_small_and_large_bodies_equal_predictor_bit_for_bit(
    client: TestClient, model_dir: Path, served_table: Path
) -> None:
    """A body up to INLINE_BYTES is decoded on the batching thread, a larger one on a worker thread: the
    same answers either way."""
    rows = request_rows(served_table, 48)
    small, large = rows[:1], rows
    assert len(json.dumps({"rows": small})) <= INLINE_BYTES < len(json.dumps({"rows": large}))
    predictor = polyfuse.load(model_dir)
    for request in (small, large):
        response = client.post("/v1/predict", json={"rows": request})
        assert response.status_code == 200, response.text
        expected = predictor.predict_proba(request).to_numpy().astype(np.float64)
        assert np.array_equal(_probabilities(response.json()), expected)


def test_multipart_rows_equal_json_rows(client: TestClient, served_table: Path) -> None:
    rows = request_rows(served_table, 3)
    files: list[tuple[str, tuple[str | None, bytes | str]]] = []
    for i, row in enumerate(rows):
        for column, value in row.items():
            if column in ("image", "audio"):
                files.append((f"rows[{i}][{column}]", ("../../evil.bin", base64.b64decode(value))))
            else:
                files.append((f"rows[{i}][{column}]", (None, str(value))))
    multipart = client.post("/v1/predict", files=files)
    assert multipart.status_code == 200, multipart.text
    as_json = client.post("/v1/predict", json={"rows": rows}).json()
    assert multipart.json()["predictions"] == as_json["predictions"]
    # a single row may name its parts by column alone
    single = [
        (c, ("x", base64.b64decode(v)) if c in ("image", "audio") else (None, str(v)))
        for c, v in rows[0].items()
    ]
    one = client.post("/v1/predict", files=single)
    assert one.status_code == 200, one.text
    # (compared with the same single row as JSON: a 1-row batch may differ from a 3-row one in the last bits)
    assert (
        one.json()["predictions"] == client.post("/v1/predict", json={"rows": rows[:1]}).json()["predictions"]
    )


def _concurrent(client: TestClient, requests: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = [{} for _ in requests]

    def send(i: int) -> None:
        response = client.post(
            "/v1/predict", json={"rows": requests[i]}, headers={"X-Request-ID": f"req-{i}"}
        )
        assert response.status_code == 200, response.text
        answers[i] = response.json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@pytest.mark.parametrize("batching", [False, True])
def test_concurrent_requests_get_their_own_rows(
    model_dir: Path, engine: Engine, served_table: Path, batching: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bit for bit: each request's answer is Predictor.predict_proba of the rows that shared its forward
    pass (with batching off: its own rows), sliced to its own. Against the request's rows alone, a
    micro-batched answer may differ in the last float32 bits (see the README's serving section: CPU
    kernels sum in another order for another batch shape; the Predictor differs from itself the same way
    between a row alone and the row among others); that tolerance is checked too."""
    rows = request_rows(served_table, 48)
    requests = [rows[i : i + 1 + i % 3] for i in range(0, 40, 3)]  # 14 requests of 1-3 rows, all different
    predictor = polyfuse.load(model_dir)
    settings = ServeSettings(batching=Batching(enabled=batching, max_wait_ms=50, max_batch_rows=16))
    # which requests shared each forward pass: the engine's samples lists, tagged by request
    tags: dict[int, int] = {}
    passes: list[list[int]] = []
    encode, forward = engine.encode, engine.forward

    def tagged_encode(request_rows_: list[dict[str, Any]]) -> Any:
        samples = encode(request_rows_)
        if request_rows_ in requests:
            tags[id(samples)] = requests.index(request_rows_)
        return samples

    def recorded_forward(batch: list[Any]) -> Any:
        if all(id(samples) in tags for samples in batch):
            passes.append([tags[id(samples)] for samples in batch])
        return forward(batch)

    monkeypatch.setattr(engine, "encode", tagged_encode)
    monkeypatch.setattr(engine, "forward", recorded_forward)
    app = create_app(model_dir, settings, engine)
    with TestClient(app) as client:
        answers = _concurrent(client, requests)
    assert sorted(i for batch in passes for i in batch) == list(range(len(requests)))
    if batching:
        assert len(passes) < len(requests)  # some requests shared a forward pass
    else:
        assert all(len(batch) == 1 for batch in passes)
    for batch in passes:
        merged = [row for i in batch for row in requests[i]]
        expected = predictor.predict_proba(merged).to_numpy().astype(np.float64)
        start = 0
        for i in batch:
            got = _probabilities(answers[i])
            assert answers[i]["request_id"] == f"req-{i}"
            assert np.array_equal(got, expected[start : start + len(requests[i])])
            start += len(requests[i])
    for request, answer in zip(requests, answers, strict=True):
        alone = predictor.predict_proba(request).to_numpy().astype(np.float64)
        np.testing.assert_allclose(_probabilities(answer), alone, rtol=0, atol=1e-6)
        assert (_probabilities(answer).argmax(1) == alone.argmax(1)).all()
