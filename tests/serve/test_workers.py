"""`polyfuse serve --workers 2`: two processes behind one port, each with its own model, both answer (the
access log names the worker's pid), predictions are the model's, and SIGTERM stops both with exit 0."""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_helpers import request_rows
from test_process import POLYFUSE, _free_port, _post, _wait_ready

import polyfuse

pytestmark = pytest.mark.slow


def test_two_workers_share_one_port_and_stop_on_sigterm(model_dir: Path, served_table: Path) -> None:
    port = _free_port()
    command = [*POLYFUSE, "serve", str(model_dir), "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rows = request_rows(served_table, 8)
    try:
        _wait_ready(port, process, timeout=600)  # every worker imports torch and loads its own model
        with ThreadPoolExecutor(
            8
        ) as pool:  # concurrent connections, so a busy worker leaves some to the other
            answers = list(pool.map(lambda i: _post(port, [rows[i % len(rows)]]), range(64)))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)  # drains the pipes while it stops
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
    predictor = polyfuse.load(model_dir)
    expected = [predictor.predict([row])["label"][0] for row in rows]  # each row alone, as it was sent
    got = [body["predictions"][0]["label"]["prediction"] for _, body in answers]
    assert got == [expected[i % len(rows)] for i in range(64)]
    log = stderr.decode()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    workers = {line["pid"] for line in lines if line.get("event") == "worker"}
    answered = {line["pid"] for line in lines if line.get("event") == "request" and line.get("status") == 200}
    assert len(workers) == 2 and process.pid not in workers
    assert answered == workers, f"only {answered} of the workers {workers} answered"
