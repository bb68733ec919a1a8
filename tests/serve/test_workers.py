"""`polyfuse serve --workers 2`: two processes behind one port, each with its own model, both answer (the
access log names the worker's pid), predictions are the model's, and SIGTERM stops both with exit 0."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import request_rows
from test_process import POLYFUSE, _free_port, _post, _wait_ready

import polyfuse

pytestmark = pytest.mark.slow


def test_two_workers_share_one_port_and_stop_on_sigterm(
    model_dir: Path, served_table: Path, tmp_path: Path
) -> None:
    port = _free_port()
    command = [*POLYFUSE, "serve", str(model_dir), "--port", str(port), "--workers", "2"]
    log_path = tmp_path / "serve.log"  # read while serving: which workers have answered so far
    rows = request_rows(served_table, 8)
    answers: list[tuple[int, dict[str, Any]]] = []
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            _wait_ready(port, process, timeout=600)  # every worker imports torch and loads its own model
            # /readyz answers as soon as one worker is up; the other may still be loading its model and
            # then takes no connection. Send rounds of concurrent requests until both have answered.
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                with ThreadPoolExecutor(8) as pool:  # concurrent connections: a busy worker leaves some
                    answers += list(pool.map(lambda i: _post(port, [rows[i % len(rows)]]), range(32)))
                if len(_pids(log_path, partial=True)[1]) == 2:
                    break
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
    log = log_path.read_text()
    assert process.returncode == 0, log[-3000:]
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
    predictor = polyfuse.load(model_dir)
    expected = [predictor.predict([row])["label"][0] for row in rows]  # each row alone, as it was sent
    got = [body["predictions"][0]["label"]["prediction"] for _, body in answers]
    assert got == [expected[i % len(rows)] for i in range(32)] * (len(answers) // 32)
    workers, answered = _pids(log_path)
    assert len(workers) == 2 and process.pid not in workers
    assert answered == workers, f"only {answered} of the workers {workers} answered"


def _pids(log_path: Path, partial: bool = False) -> tuple[set[int], set[int]]:
    """The workers that started and those that answered a request with 200, from the JSON log. `partial`:
    the log is still being written, so its last line may be cut short."""
    lines = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                if not partial:
                    raise
    workers = {line["pid"] for line in lines if line.get("event") == "worker"}
    answered = {line["pid"] for line in lines if line.get("event") == "request" and line.get("status") == 200}
    return workers, answered
