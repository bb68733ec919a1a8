"""Schemathesis against the server's own /openapi.json: requests generated from the schema (valid and
invalid bodies, query parameters and headers) never get a 5xx, on a supervised model and on a contrastive +
matching model serving an index. Examples are bounded so the module runs in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from polyfuse.serve import ServeSettings, create_app
from polyfuse.serve.engine import Engine

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

pytestmark = pytest.mark.slow


class _LifespanRunElsewhere:
    """The app for Schemathesis's client, whose own lifespan handling is a no-op: the real lifespan runs
    (and ends) inside the fixture's TestClient, instead of staying up until the interpreter exits."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.fixture(scope="module", params=["supervised", "aligned"])
def api_schema(
    request: pytest.FixtureRequest, model_dir: Path, engine: Engine, aligned_model: tuple[Path, Path]
) -> Iterator[Any]:
    if request.param == "supervised":
        app = create_app(model_dir, ServeSettings(), engine)
    else:
        app = create_app(aligned_model[0], ServeSettings(index_dir=aligned_model[1]))
    with TestClient(app):  # runs the lifespan: the model is warm and the batcher started
        yield schemathesis.openapi.from_asgi("/openapi.json", _LifespanRunElsewhere(app))


def test_no_generated_request_gets_a_5xx(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert any(op.path.startswith("/v1/") and op.method.upper() == "POST" for op in operations)
    calls = {GenerationMode.POSITIVE: 0, GenerationMode.NEGATIVE: 0}
    current: list[GenerationMode] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            current[:] = [mode]

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def no_5xx(case: Any) -> None:
                calls[current[0]] += 1
                case.call_and_validate(checks=[not_a_server_error])

            try:
                no_5xx()
            except Unsatisfiable:
                # an operation without parameters or body (GET /healthz) has no invalid request to make
                assert mode is GenerationMode.NEGATIVE, operation.path
    assert calls[GenerationMode.POSITIVE] > 0 and calls[GenerationMode.NEGATIVE] > 0, calls
