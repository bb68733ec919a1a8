"""/v1/embed, /v1/consistency and /v1/search on a contrastive + matching model trained with `polyfuse train`
and an index built with `polyfuse index build`: each answers exactly what the Predictor answers for the
same rows; a model or server without the capability answers 404 naming what is missing."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from serve_helpers import request_rows
from test_process import POLYFUSE, _free_port, _wait_ready

import polyfuse
from polyfuse.retrieval import Index
from polyfuse.serve import Batching, ServeSettings, create_app
from polyfuse.serve.engine import Engine

pytestmark = pytest.mark.slow
UNBATCHED = Batching(enabled=False)


@pytest.fixture(scope="module")
def aligned_client(aligned_model: tuple[Path, Path]) -> Iterator[TestClient]:
    model, index = aligned_model
    with TestClient(create_app(model, ServeSettings(index_dir=index, batching=UNBATCHED))) as client:
        yield client


def _vectors(answers: list[list[float] | None], width: int) -> np.ndarray:
    """JSON vectors → (N, E) float32, NaN rows for null (as the Predictor marks a missing vector)."""
    return np.array([a if a is not None else [np.nan] * width for a in answers], dtype=np.float32)


def _rows(table: Path) -> list[dict[str, Any]]:
    rows = request_rows(table, 10)
    rows[1].pop("image", None)  # rows lacking an input
    rows[2].pop("audio", None)
    rows[3].pop("text", None)
    return [*rows, {"text": "river boat"}, {}]  # one input only; nothing at all


def test_embed_equals_predictor_embed(
    aligned_client: TestClient, aligned_model: tuple[Path, Path], served_table: Path
) -> None:
    predictor = polyfuse.load(aligned_model[0])
    rows = _rows(served_table)
    response = aligned_client.post("/v1/embed", json={"rows": rows})
    assert response.status_code == 200, response.text
    answers = response.json()["embeddings"]
    assert len(answers) == len(rows)
    expected = predictor.embed(rows)
    got = _vectors([a["embedding"] for a in answers], expected.shape[1])
    assert np.array_equal(got, expected, equal_nan=True)
    assert answers[-1]["inputs"] == {"text": None, "image": None, "audio": None}
    for name in ("text", "image", "audio"):
        per_input = predictor.embed(rows, modality=name)
        got = _vectors([a["inputs"][name] for a in answers], per_input.shape[1])
        assert np.array_equal(got, per_input, equal_nan=True), name
        assert np.isnan(per_input).any(axis=1).sum() >= 1  # some rows lack it: null, as NaN


def test_consistency_equals_predictor_consistency(
    aligned_client: TestClient, aligned_model: tuple[Path, Path], served_table: Path
) -> None:
    rows = _rows(served_table)
    response = aligned_client.post("/v1/consistency", json={"rows": rows})
    assert response.status_code == 200, response.text
    scores = [s["consistency"] for s in response.json()["scores"]]
    expected = polyfuse.load(aligned_model[0]).consistency(rows)
    assert np.array_equal(np.array([np.nan if s is None else s for s in scores]), expected, equal_nan=True)
    assert scores[-1] is None and scores[-2] is None  # fewer than two inputs: no score
    assert all(0.0 <= s <= 1.0 for s in scores if s is not None)


def test_search_equals_predictor_search(
    aligned_client: TestClient, aligned_model: tuple[Path, Path], served_table: Path
) -> None:
    model, index_dir = aligned_model
    predictor = polyfuse.load(model)
    index = Index.load(index_dir)
    rows = request_rows(served_table, 6)
    queries = [
        ({"image": rows[0]["image"]}, "audio"),
        ({"audio": next(r["audio"] for r in rows if "audio" in r)}, "image"),
        ({"text": "river boat"}, "image"),
        ({"image": rows[1]["image"]}, "text"),
    ]
    frame = pd.read_csv(served_table, keep_default_na=False, na_values=[""])
    singles = []
    for query, target in queries:
        response = aligned_client.post(f"/v1/search?target={target}&k=5", json={"rows": [query]})
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        singles.append(result)
        expected = predictor.search(index, query, target=target, k=5)
        assert result["query"] == next(iter(query)) and result["target"] == target
        assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
        assert [h["row"] for h in result["hits"]] == expected["row"].tolist()
        assert np.array_equal(np.array([h["score"] for h in result["hits"]]), expected["score"].to_numpy())
        first = result["hits"][0]
        assert first["fields"]["id"] == int(frame["id"][first["row"]])
        cell = frame["image"][first["row"]]
        assert first["fields"]["image"] == (None if pd.isna(cell) else cell)  # the table's cell, not bytes
    # several queries in one request: each gets its own hits, in order
    several = aligned_client.post(
        "/v1/search?k=5&target=image", json={"rows": [queries[1][0], queries[2][0]]}
    )
    assert several.status_code == 200, several.text
    for got, single in zip(several.json()["results"], singles[1:3], strict=True):
        assert [h["row"] for h in got["hits"]] == [h["row"] for h in single["hits"]]
        np.testing.assert_allclose(
            [h["score"] for h in got["hits"]], [h["score"] for h in single["hits"]], rtol=0, atol=1e-6
        )


@pytest.mark.parametrize(
    ("url", "rows", "field", "words"),
    [
        ("/v1/search?target=audio", [{"image": "aGk=", "text": "two inputs"}], "rows", "exactly one"),
        ("/v1/search?target=audio", [{}], "rows", "exactly one"),
        ("/v1/search", [{"image": "aGk="}], "target", "?target="),  # the index holds text, image, audio
        ("/v1/search?target=colour", [{"image": "aGk="}], "target", "Input should be"),
        ("/v1/search?target=audio&k=0", [{"image": "aGk="}], "k", "greater than or equal to 1"),
        ("/v1/search?target=audio&k=ten", [{"image": "aGk="}], "k", "valid integer"),
        ("/v1/search?target=audio&extra=1", [{"image": "aGk="}], "extra", "Extra inputs"),
        ("/v1/embed?k=3", [{"text": "a"}], None, "no query parameters"),
    ],
)
def test_bad_search_requests_get_422_naming_the_field(
    aligned_client: TestClient, url: str, rows: list[dict[str, Any]], field: str | None, words: str
) -> None:
    response = aligned_client.post(url, json={"rows": rows})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert words in error["message"]
    if field is not None:
        assert error["problems"][0]["field"] == field


def test_missing_capabilities_get_404_naming_the_objective(
    aligned_client: TestClient, aligned_model: tuple[Path, Path], model_dir: Path, engine: Engine
) -> None:
    no_head = aligned_client.post("/v1/predict", json={"rows": [{"text": "a"}]})
    assert no_head.status_code == 404
    assert "'supervised' objective" in no_head.json()["error"]["message"]
    with TestClient(create_app(aligned_model[0], ServeSettings())) as no_index:  # no --index
        response = no_index.post("/v1/search?target=image", json={"rows": [{"text": "a"}]})
        assert response.status_code == 404 and "--index DIR" in response.json()["error"]["message"]
        assert no_index.post("/v1/embed", json={"rows": [{"text": "a"}]}).status_code == 200
    with TestClient(create_app(model_dir, ServeSettings(), engine)) as supervised:
        for path, objective in (("/v1/embed", "contrastive"), ("/v1/consistency", "matching")):
            response = supervised.post(path, json={"rows": [{"text": "a"}]})
            assert response.status_code == 404, response.text
            assert f"'{objective}' objective" in response.json()["error"]["message"]
        schema = supervised.get("/openapi.json").json()
        assert "/v1/predict" in schema["paths"] and "/v1/embed" not in schema["paths"]


def test_python_client_and_cli_index_option(aligned_model: tuple[Path, Path], served_table: Path) -> None:
    """`polyfuse serve MODEL --index DIR` in its own process, called through polyfuse.client.Client."""
    from polyfuse.client import Client, ClientError

    model, index_dir = aligned_model
    port = _free_port()
    command = [*POLYFUSE, "serve", str(model), "--port", str(port), "--index", str(index_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, process)
        client = Client(f"http://127.0.0.1:{port}")
        predictor = polyfuse.load(model)
        image = served_table.parent / "images" / "00000.png"
        rows: list[dict[str, Any]] = [{"image": image, "text": "river boat"}]
        as_paths = [{"image": str(image), "text": "river boat"}]
        embedded = client.embed(rows)
        assert np.array_equal(np.array(embedded[0]["embedding"], np.float32), predictor.embed(as_paths)[0])
        assert client.consistency(rows) == predictor.consistency(as_paths).tolist()
        (result,) = client.search([{"image": image}], target="audio", k=3)
        expected = predictor.search(index_dir, {"image": str(image)}, target="audio", k=3)
        assert [h["row"] for h in result["hits"]] == expected["row"].tolist()
        with pytest.raises(ClientError) as info:
            client.predict(rows)
        assert info.value.status == 404
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=300)  # drains the pipes while it stops
        assert process.returncode == 0, log.decode()[-3000:]
