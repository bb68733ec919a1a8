"""Start-up: refuse unsafe configurations, load the model, run uvicorn (one process or N workers).

SIGTERM / SIGINT: uvicorn stops accepting connections, waits for every in-flight request (up to
`shutdown_timeout_s`), then the lifespan drains the batcher and the process exits 0.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from polyfuse.data.errors import DataError, Problem
from polyfuse.serve.app import create_app
from polyfuse.serve.auth import is_loopback
from polyfuse.serve.engine import Engine
from polyfuse.serve.observability import LOGGER, configure_logging
from polyfuse.serve.settings import ServeSettings

_ENV_MODEL = "POLYFUSE_SERVE_MODEL_DIR"
_ENV_SETTINGS = "POLYFUSE_SERVE_SETTINGS"


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process dies *by* the signal (status
    -15). A shutdown that finished every request is a success: exit 0 instead."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def check_settings(settings: ServeSettings) -> None:
    """Refuse to expose an open server: a non-loopback address needs keys or an explicit opt-out."""
    if not is_loopback(settings.host) and not settings.api_key_hashes and not settings.insecure_no_auth:
        raise DataError(
            [
                Problem(
                    f"refusing to listen on {settings.host} without API keys: anyone who can reach it could use the model",
                    fix="give --api-keys FILE (or set POLYFUSE_API_KEYS), or --insecure-no-auth if a gateway in "
                    "front of the server does authentication",
                )
            ]
        )


def serve(model_dir: Path | str, settings: ServeSettings) -> None:
    """Run the server until SIGTERM / SIGINT. Errors in the model directory stop it before it listens."""
    check_settings(settings)
    log = configure_logging()
    if not settings.api_key_hashes:
        log.warning(
            "no API keys: every request is accepted",
            extra={"fields": {"event": "auth_off", "host": settings.host}},
        )
    common = {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,  # the app writes its own JSON access log, with request ids
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_s),
        "log_level": "info",
    }
    if settings.workers == 1:
        engine = Engine(model_dir, settings.limits)  # a bad model directory fails here, with its reason
        config = uvicorn.Config(create_app(model_dir, settings, engine), **common)  # type: ignore[arg-type]
        _GracefulServer(config).run()
        return
    Engine(model_dir, settings.limits)  # check once here; each worker then loads its own copy
    os.environ[_ENV_MODEL] = str(Path(model_dir).resolve())
    os.environ[_ENV_SETTINGS] = settings.model_dump_json()
    uvicorn.run(
        "polyfuse.serve.server:app_from_environment",
        factory=True,
        workers=settings.workers,
        **common,  # type: ignore[arg-type]
    )


def app_from_environment() -> FastAPI:
    """The app a worker process builds (uvicorn --workers imports this factory in every worker)."""
    settings = ServeSettings.model_validate_json(os.environ[_ENV_SETTINGS])
    configure_logging()  # a worker is a fresh (spawned) process: its JSON log handler is not inherited
    logging.getLogger(LOGGER).info(
        "worker starting", extra={"fields": {"event": "worker", "pid": os.getpid()}}
    )
    return create_app(os.environ[_ENV_MODEL], settings)
