"""The FastAPI application: routes, the gate every request passes (request id, auth, body limit, metrics,
access log), and the lifespan that loads the model once and starts the micro-batcher.

Adding an inference endpoint is one call to `add_inference_route` with a function that turns a request's
`RequestOutputs` into its answer rows (see how /v1/predict is added in `create_app`, and the alignment
endpoints in `polyfuse.serve.alignment`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polyfuse.data.decode_pool import usable_cores
from polyfuse.data.errors import DataError
from polyfuse.data.preprocess import Sample
from polyfuse.serve.auth import KeyChecker, presented_key
from polyfuse.serve.batcher import MicroBatcher
from polyfuse.serve.engine import Engine, RequestOutputs
from polyfuse.serve.errors import ApiError, from_data_error
from polyfuse.serve.observability import LOGGER, Metrics, configure_logging, request_id_from
from polyfuse.serve.requests import (
    Row,
    parse_json,
    request_model,
    response_model,
    rows_from_form,
    rows_from_json,
)
from polyfuse.serve.settings import ServeSettings

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})  # no key needed: liveness, readiness, the page
KNOWN_ROUTES = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/model", "/openapi.json", "/docs"})
PLAYGROUND = Path(__file__).parent / "static" / "playground.html"

# (engine, one request's outputs, its validated query parameters or None) → its answer rows
Formatter = Callable[[Engine, RequestOutputs, Any], list[dict[str, Any]]]
# rows and query parameters checked before the rows are decoded (raise ApiError to refuse the request)
RowsCheck = Callable[[Engine, list[Row], Any], None]
# what the batching thread runs per request: how to get its samples (decoding its rows there, or the
# samples a worker thread decoded) and how to turn its outputs into answer rows
Job = tuple[Callable[[Engine], list[Sample]], Callable[[Engine, RequestOutputs], list[dict[str, Any]]]]
# a request's answer rows, or why its rows were refused (its endpoint raises it)
Answer = list[dict[str, Any]] | ApiError
# A body up to this size is parsed on the event loop (~0.2 ms at most: a hop to a worker thread and back
# costs more) and decoded on the batching thread. A larger one is parsed and decoded on a worker thread,
# so that a request of big images cannot hold up every other request's forward pass (and the loop).
# A one-row AV-Digits request is ~15 KB.
INLINE_BYTES = 64 * 1024


@dataclass
class ServerState:
    settings: ServeSettings
    model_dir: Path
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    batcher: MicroBatcher[Job, Answer] | None = None
    ready: bool = False
    keys: KeyChecker = field(default_factory=lambda: KeyChecker([]))
    parse_limiter: anyio.CapacityLimiter | None = None  # threads for large bodies (see INLINE_BYTES)
    inference_routes: set[str] = field(default_factory=set)
    request_model: type[BaseModel] | None = None  # generated from the model's input columns


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.polyfuse
    return state


# --- the gate: a pure ASGI middleware, so that limits hold before any body is read -----------------


class Gate:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.log = logging.getLogger(LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = request_id_from(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        route = path if path in KNOWN_ROUTES or path in self.state.inference_routes else "other"
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            refusal = self._refusal(path, headers)
            if refusal is not None:
                await _send_error(refusal, request_id, send_with_id)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            self.state.metrics.requests.labels(route, str(status)).inc()
            self.state.metrics.latency.labels(route).observe(elapsed)
            fields = {
                "event": "request",
                "request_id": request_id,
                "method": scope["method"],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "client": (scope.get("client") or ("", 0))[0],
                "rows": scope["state"].get("rows"),
            }
            self.log.info("request", extra={"fields": fields})

    def _refusal(self, path: str, headers: dict[str, str]) -> ApiError | None:
        if self.state.keys.enabled and path not in OPEN_PATHS:
            key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
            if key is None:
                return ApiError(
                    401,
                    "unauthorized",
                    "an API key is required: send `Authorization: Bearer <key>`",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not self.state.keys.check(key):
                return ApiError(403, "forbidden", "the API key is not valid")
        length = headers.get("content-length")
        limit = self.state.settings.limits.max_body_bytes
        if length is not None:
            if not length.isdigit():
                return ApiError(400, "bad_request", "Content-Length is not a number")
            if int(length) > limit:
                return _body_too_large(limit)
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive (chunked bodies have no Content-Length) and stop at the limit."""
        limit = self.state.settings.limits.max_body_bytes
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _body_too_large(limit)
            return message

        return limited


def _body_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the request body is over the limit of {limit} bytes",
        [{"field": "body", "kind": "too_large", "message": f"at most {limit} bytes"}],
    )


async def _send_error(error: ApiError, request_id: str, send: Send) -> None:
    response = _error_response(error, request_id)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _error_response(error: ApiError, request_id: str) -> JSONResponse:
    return JSONResponse(error.body(request_id), status_code=error.status, headers=error.headers)


# --- inference routes ---------------------------------------------------------------------------------


async def _read_rows(request: Request, state: ServerState, engine: Engine) -> tuple[bytes | list[Row], int]:
    """The request's rows from a form, or a JSON body's bytes (parsed later); and the bytes read."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limits = state.settings.limits
    if content_type == "application/json":
        body = await request.body()
        return body, len(body)
    if content_type == "multipart/form-data":
        form = await request.form(
            max_files=limits.max_form_parts,
            max_fields=limits.max_form_parts,
            max_part_size=limits.max_file_bytes,
        )
        parts: list[tuple[str, str | bytes]] = []
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if value.size is not None and value.size > limits.max_file_bytes:
                        raise ApiError(
                            413,
                            "too_large",
                            f"file part '{name[:100]}' is over {limits.max_file_bytes} bytes",
                            [
                                {
                                    "field": name[:100],
                                    "kind": "too_large",
                                    "message": f"at most {limits.max_file_bytes} bytes",
                                }
                            ],
                        )
                    parts.append((name, await value.read()))  # the client's file name is never used
                else:
                    parts.append((name, value))
        finally:
            await form.close()
        return rows_from_form(parts, engine.columns, limits), sum(len(value) for _, value in parts)
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type '{content_type[:80]}' is not accepted; send application/json or multipart/form-data",
    )


def add_inference_route(
    app: FastAPI,
    path: str,
    name: str,
    formatter: Formatter,
    answer_model: type[BaseModel],
    summary: str,
    *,
    parameters: type[BaseModel] | None = None,
    check_rows: RowsCheck | None = None,
) -> None:
    """POST `path`: rows in (JSON or multipart), `formatter`'s answer rows out, through the batcher.

    `parameters`: a model of the route's query parameters (e.g. `?k=5`), validated before the body is read
    (422 naming the parameter); `check_rows` sees the rows and parameters before any cell is decoded."""
    state: ServerState = app.state.polyfuse
    state.inference_routes.add(path)

    async def endpoint(request: Request) -> Response:
        options = _query_parameters(request, parameters)
        if not state.ready or state.engine is None or state.batcher is None:
            raise ApiError(503, "not_ready", "the model is not loaded yet", headers={"Retry-After": "1"})
        engine, batcher = state.engine, state.batcher
        settings = state.settings
        if not batcher.try_admit():
            state.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                503,
                "overloaded",
                f"{settings.batching.max_pending} requests are already waiting; retry shortly",
                headers={"Retry-After": str(settings.batching.retry_after_s)},
            )
        state.metrics.pending.inc()
        deadline = time.monotonic() + settings.batching.request_timeout_s
        try:
            body, size = await asyncio.wait_for(
                _read_rows(request, state, engine), settings.batching.request_timeout_s
            )

            def check(rows_: list[Row]) -> None:
                if check_rows is not None:
                    check_rows(engine, rows_, options)

            decode: Callable[[Engine], list[Sample]]
            if size <= INLINE_BYTES:
                rows = _parsed(body, state)
                check(rows)
                count = len(rows)

                def decode(engine_: Engine) -> list[Sample]:
                    return engine_.encode(rows)  # on the batching thread; DataError → this request's 4xx

            else:
                samples = await asyncio.wait_for(
                    anyio.to_thread.run_sync(
                        _decoded,
                        engine,
                        state,
                        body,
                        check,
                        abandon_on_cancel=True,
                        limiter=state.parse_limiter,
                    ),
                    deadline - time.monotonic(),
                )
                count = len(samples)

                def decode(engine_: Engine) -> list[Sample]:
                    return samples

            request.scope["state"]["rows"] = count
            state.metrics.queue_depth.set(batcher.queue_depth + 1)

            def answer(engine_: Engine, outputs: RequestOutputs) -> list[dict[str, Any]]:
                return formatter(engine_, outputs, options)

            answers = await batcher.submit((decode, answer), count, deadline - time.monotonic())
            if isinstance(answers, ApiError):
                raise answers
        except TimeoutError:
            state.metrics.rejected.labels("timeout").inc()
            raise ApiError(
                504, "timeout", f"no answer within {settings.batching.request_timeout_s} s; retry later"
            ) from None
        finally:
            batcher.release()
            state.metrics.pending.dec()
        return JSONResponse({"request_id": request.scope["state"]["request_id"], name: answers})

    app.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        summary=summary,
        response_model=answer_model,
        openapi_extra={
            "requestBody": _request_body_schema(state),
            "parameters": _query_parameters_schema(parameters),
        },
        responses={
            401: {"description": "no API key"},
            403: {"description": "wrong API key"},
            413: {"description": "over a limit (body, file, pixels, duration, text, rows)"},
            415: {"description": "content type or media format not accepted"},
            422: {"description": "invalid rows; each problem names its row and field"},
            503: {"description": "overloaded or not ready (Retry-After)"},
            504: {"description": "timed out"},
        },
    )


def add_unsupported_route(app: FastAPI, path: str, reason: str) -> None:
    """POST `path` on a model that cannot serve it: 404 saying why and what to do (not in the schema)."""
    state: ServerState = app.state.polyfuse
    state.inference_routes.add(path)

    async def unsupported(request: Request) -> Response:
        raise ApiError(404, "not_supported", reason)

    app.add_api_route(path, unsupported, methods=["POST"], include_in_schema=False)


def _query_parameters(request: Request, parameters: type[BaseModel] | None) -> Any:
    given = dict(request.query_params)
    if parameters is None:
        if given:
            names = [name[:50] for name in sorted(given)[:5]]
            raise ApiError(422, "invalid", f"this route takes no query parameters, got {names}")
        return None
    try:
        return parameters.model_validate(given)
    except ValidationError as e:
        problems = [
            {
                "field": ".".join(str(p) for p in item["loc"]) or "query",
                "kind": "invalid",
                "message": item["msg"],
            }
            for item in e.errors(include_url=False, include_input=False)
        ]
        raise ApiError(
            422, "invalid", f"query parameter '{problems[0]['field']}': {problems[0]['message']}", problems
        ) from None


def _query_parameters_schema(parameters: type[BaseModel] | None) -> list[dict[str, Any]]:
    if parameters is None:
        return []
    schema = parameters.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": field_schema}
        for name, field_schema in schema.get("properties", {}).items()
    ]


def _parsed(body: bytes | list[Row], state: ServerState) -> list[Row]:
    """A JSON body's rows, parsed and validated (a form's rows as they are)."""
    if not isinstance(body, bytes):
        return body
    assert state.request_model is not None
    return rows_from_json(parse_json(body), state.request_model, state.settings.limits)


def _decoded(
    engine: Engine, state: ServerState, body: bytes | list[Row], check: Callable[[list[Row]], None]
) -> list[Sample]:
    """A large body → samples, on a worker thread: JSON parsing, validation, decoding and the limits."""
    rows = _parsed(body, state)
    check(rows)
    try:
        return engine.encode(rows)
    except DataError as e:
        raise from_data_error(e) from None


def run_batch(engine: Engine, jobs: list[Job]) -> list[Answer]:
    """What the batching thread does with one batch: decode each small request's rows (a large one comes
    decoded, see INLINE_BYTES), one forward pass over the requests whose rows all decoded, each request's
    answer rows (or the 4xx for its bad rows).

    Decoding here rather than on a thread per request: the rows reach the batcher as soon as they are
    parsed (more requests share a pass), a lone request makes one thread hop instead of two, a request
    that timed out in the queue is never decoded, and decoding (GIL-bound Python around small C calls,
    ~0.5 ms an AV-Digits row) no longer contends with the forward pass from many threads at once.
    """
    refused: dict[int, ApiError] = {}
    decoded: list[list[Sample]] = []
    for position, (decode, _) in enumerate(jobs):
        try:
            decoded.append(decode(engine))
        except DataError as e:
            refused[position] = from_data_error(e)
    outputs = iter(engine.forward(decoded) if decoded else [])
    return [
        refused[position] if position in refused else formatter(engine, next(outputs))
        for position, (_, formatter) in enumerate(jobs)
    ]


def _request_body_schema(state: ServerState) -> dict[str, Any]:
    engine = state.engine
    assert engine is not None
    properties: dict[str, Any] = {}
    for column, kind in engine.columns.items():
        media = kind.value in ("image", "audio")
        properties[column] = {"type": "string", "format": "binary"} if media else {"type": "string"}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": properties}},
        },
    }


def predictions(engine: Engine, outputs: RequestOutputs, _: Any) -> list[dict[str, Any]]:
    return engine.predictions(outputs)


# --- the app ------------------------------------------------------------------------------------------


def create_app(
    model_dir: Path | str, settings: ServeSettings | None = None, engine: Engine | None = None
) -> FastAPI:
    """The server for one model directory. Pass `engine` to reuse an already loaded model."""
    settings = settings or ServeSettings()
    state = ServerState(settings, Path(model_dir), keys=KeyChecker(settings.api_key_hashes))
    # Route schemas come from the model, so it is loaded here (once); the lifespan warms it and starts
    # the batching thread. Worker processes each build their own app and so load their own copy.
    started = time.perf_counter()
    state.engine = engine or Engine(model_dir, settings.limits)
    state.metrics.model_load_seconds.set(
        time.perf_counter() - started if engine is None else engine.load_seconds
    )
    state.request_model = request_model(state.engine.columns, settings.limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log = configure_logging()
        private_tmp = tempfile.mkdtemp(prefix="polyfuse-serve-")
        previous_tmp = tempfile.tempdir
        tempfile.tempdir = private_tmp  # multipart uploads spill here, and nowhere else
        assert state.engine is not None
        started = time.perf_counter()
        await anyio.to_thread.run_sync(state.engine.warm_up)
        state.metrics.model_load_seconds.inc(time.perf_counter() - started)
        # Parsing and decoding large bodies: threads beyond the cores add no speed, only contention for
        # the GIL with the batching thread (which releases it at every torch op and must win it back).
        state.parse_limiter = anyio.CapacityLimiter(usable_cores())
        engine_ = state.engine
        metrics = state.metrics

        def run(jobs: list[Job]) -> list[Answer]:
            return run_batch(engine_, jobs)

        def on_batch(rows: int, requests: int) -> None:
            metrics.batch_rows.observe(rows)
            metrics.batch_requests.observe(requests)

        state.batcher = MicroBatcher(run, settings.batching, on_batch)
        state.ready = True
        log.info("ready", extra={"fields": {"event": "ready", "model_dir": str(state.model_dir)}})
        try:
            yield
        finally:
            state.ready = False
            log.info("stopping", extra={"fields": {"event": "stopping"}})
            await anyio.to_thread.run_sync(state.batcher.close)
            tempfile.tempdir = previous_tmp
            shutil.rmtree(private_tmp, ignore_errors=True)

    app = FastAPI(
        title="polyfuse model server",
        version=str(state.engine.info.get("polyfuse_version")),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.polyfuse = state
    app.add_middleware(Gate, state=state)
    _install_error_handlers(app)
    _add_service_routes(app, state)
    if state.engine.specs:
        add_inference_route(
            app,
            "/v1/predict",
            "predictions",
            predictions,
            response_model(state.engine.specs),
            "Labels and class probabilities for one or many rows",
        )
    else:
        add_unsupported_route(app, "/v1/predict", state.engine.missing("predict"))
    from polyfuse.serve.alignment import add_alignment_routes  # it builds on this module's functions

    add_alignment_routes(app, state.engine, settings.index_dir)
    _install_openapi(app, state)
    return app


def _add_service_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="Model loaded and warmed up", responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/v1/model", summary="Input fields, targets and classes, version, metrics and limits")
    async def model() -> dict[str, Any]:
        assert state.engine is not None
        return state.engine.description()

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.queue_depth)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", summary="Playground page", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = PLAYGROUND.read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{AUTH}}", "required" if state.keys.enabled else "none"))


def _install_error_handlers(app: FastAPI) -> None:
    log = logging.getLogger(LOGGER)

    def request_id(request: Request) -> str:
        return str(request.scope.get("state", {}).get("request_id", ""))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(exc, request_id(request))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        error = ApiError(
            exc.status_code,
            codes.get(exc.status_code, "error"),
            str(exc.detail)[:300],
            headers=dict(exc.headers or {}),
        )
        return _error_response(error, request_id(request))

    async def validation_error(request: Request, exc: Exception) -> Response:
        return _error_response(
            ApiError(422, "invalid", "the request does not match the schema"), request_id(request)
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc, extra={"fields": {"request_id": request_id(request)}})
        error = ApiError(500, "internal", "internal error; the server log has details under this request id")
        return _error_response(error, request_id(request))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _install_openapi(app: FastAPI, state: ServerState) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            assert state.request_model is not None
            request_schema = state.request_model.model_json_schema(
                ref_template="#/components/schemas/{model}", by_alias=True
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["PredictRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
