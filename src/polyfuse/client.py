"""`polyfuse.client.Client`: call a `polyfuse serve` server from Python (standard library only).

    client = Client("http://127.0.0.1:8000", api_key="...")
    client.predict([{"image": Path("7.png"), "audio": Path("7.wav")}, {"text": "no media here"}])

Media given as `Path` or bytes are read here, on the client, and sent as base64; strings are sent as they
are (the server takes strings in media fields only as base64).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class ClientError(Exception):
    """The server's answer to a refused request: status, error code, message and per-field problems."""

    def __init__(
        self, status: int, code: str, message: str, problems: list[dict[str, Any]], request_id: str
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems
        self.request_id = request_id


def _cell(value: Any) -> Any:
    if isinstance(value, Path):
        value = value.read_bytes()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    return value


class Client:
    def __init__(
        self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                error = json.loads(e.read()).get("error", {})
            except ValueError:
                error = {}
            raise ClientError(
                e.code,
                error.get("code", "error"),
                error.get("message", str(e)),
                error.get("problems", []),
                error.get("request_id", ""),
            ) from None

    def _rows(self, path: str, rows: Sequence[Mapping[str, Any]], answer: str) -> list[dict[str, Any]]:
        body = {"rows": [{k: _cell(v) for k, v in row.items() if v is not None} for row in rows]}
        answers: list[dict[str, Any]] = self._call("POST", path, body)[answer]
        return answers

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One answer per row, in order: target → {"prediction", "probabilities"}."""
        return self._rows("/v1/predict", rows, "predictions")

    def embed(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One answer per row, in order: {"embedding": the row's vector, "inputs": {input: vector}}; a
        vector is None where the row lacks what it needs (contrastive models)."""
        return self._rows("/v1/embed", rows, "embeddings")

    def consistency(self, rows: Sequence[Mapping[str, Any]]) -> list[float | None]:
        """Per row, the probability that its inputs belong together; None with fewer than two inputs
        (matching models)."""
        return [answer["consistency"] for answer in self._rows("/v1/consistency", rows, "scores")]

    def search(
        self, queries: Sequence[Mapping[str, Any]], *, target: str | None = None, k: int = 10
    ) -> list[dict[str, Any]]:
        """Per query row (each holding one input's value), the k nearest rows of the server's index:
        {"query", "target", "hits": [{"rank", "score", "row", "fields"}]}."""
        parameters = {"k": str(k), **({"target": target} if target is not None else {})}
        return self._rows("/v1/search?" + urllib.parse.urlencode(parameters), queries, "results")

    def model(self) -> dict[str, Any]:
        """Input fields, targets and classes, version, metrics and limits."""
        info: dict[str, Any] = self._call("GET", "/v1/model")
        return info

    def ready(self) -> bool:
        try:
            return bool(self._call("GET", "/readyz").get("status") == "ready")
        except (ClientError, OSError):
            return False
