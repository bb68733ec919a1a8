"""Prometheus metrics and structured JSON access logs (one line per request, with its id, no payloads)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LOGGER = "polyfuse.serve"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    """The server's metrics on a registry of their own (one per app, so tests can build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "polyfuse_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "polyfuse_request_seconds",
            "time from request start to response, by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_rows = Histogram(
            "polyfuse_batch_rows",
            "rows per model forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_requests = Histogram(
            "polyfuse_batch_requests",
            "requests merged into one forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue_depth = Gauge("polyfuse_queue_depth", "requests waiting for the model", registry=r)
        self.pending = Gauge(
            "polyfuse_pending_requests", "requests admitted and not yet answered", registry=r
        )
        self.model_load_seconds = Gauge(
            "polyfuse_model_load_seconds", "time to load and warm the model", registry=r
        )
        self.rejected = Counter(
            "polyfuse_rejected", "requests refused before running, by reason", ["reason"], registry=r
        )


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is short and plain (it goes into logs), else a fresh one."""
    if header and _REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            "pid": record.process,  # which worker (--workers N) wrote the line
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """JSON lines on stderr for the polyfuse.serve logger (idempotent)."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, "_polyfuse", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._polyfuse = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
