"""The real server process: SIGTERM with requests in flight loses none and exits 0, a request during
shutdown is refused cleanly, a missing or corrupt model directory fails start-up with a one-line reason,
and a non-loopback address without keys is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import request_rows

import polyfuse

POLYFUSE = [sys.executable, "-m", "polyfuse.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, rows: list[dict[str, Any]], timeout: float = 30) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict",
        data=json.dumps({"rows": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout  # start-up imports torch and loads the model: slow on a busy box
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not become ready")


def test_sigterm_finishes_every_in_flight_request_then_exits_0(model_dir: Path, served_table: Path) -> None:
    port = _free_port()
    # a long batching wait keeps the requests in flight when the signal arrives
    command = [
        *POLYFUSE,
        "serve",
        str(model_dir),
        "--port",
        str(port),
        "--max-wait-ms",
        "1500",
        "--max-batch-rows",
        "64",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        _wait_ready(port, process)
        rows = request_rows(served_table, 6)
        results: list[tuple[int, dict[str, Any]]] = [(0, {})] * 6
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, _post(port, [rows[i]])))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all six sent and waiting for the batch
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # new connections are refused once shutdown began
            _post(port, [rows[0]], timeout=5)
        for t in threads:
            t.join()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    predictor = polyfuse.load(model_dir)
    for i, (status, body) in enumerate(results):
        assert status == 200, body
        assert body["predictions"][0]["label"]["prediction"] == predictor.predict([rows[i]])["label"][0]
    log = process.stderr.read().decode() if process.stderr else ""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [
        line for line in lines if line.get("event") == "request" and line.get("route") == "/v1/predict"
    ]
    assert len(requests) == 6 and all(line["status"] == 200 and line["request_id"] for line in requests)
    assert "base64" not in log and rows[0]["image"][:40] not in log  # payloads are never logged


def _start_failure(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*POLYFUSE, "serve", *args], capture_output=True, text=True, timeout=120)


def test_missing_model_dir_fails_start_up_with_the_reason(tmp_path: Path) -> None:
    result = _start_failure([str(tmp_path / "nothing"), "--port", str(_free_port())])
    assert result.returncode == 2
    assert "model directory not found" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_weights_fail_start_up_with_the_reason(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = _start_failure([str(broken), "--port", str(_free_port())])
    assert result.returncode == 2
    assert "corrupt or unreadable model weights" in result.stderr and "Traceback" not in result.stderr


def test_non_loopback_without_keys_is_refused(model_dir: Path) -> None:
    result = _start_failure([str(model_dir), "--host", "0.0.0.0", "--port", str(_free_port())])
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr


def test_python_client_against_a_keyed_server(model_dir: Path, served_table: Path, tmp_path: Path) -> None:
    from polyfuse.client import Client, ClientError

    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nclient-test-key-0123456789\n")
    port = _free_port()
    command = [*POLYFUSE, "serve", str(model_dir), "--port", str(port), "--api-keys", str(keys)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_ready(port, process)
        client = Client(f"http://127.0.0.1:{port}", api_key="client-test-key-0123456789")
        table_rows = request_rows(served_table, 3)
        frame_rows: list[dict[str, Any]] = [
            {"image": served_table.parent / f"images/{i:05d}.png", "text": "river boat"} for i in range(3)
        ]
        answers = client.predict(frame_rows)
        predictor = polyfuse.load(model_dir)
        expected = predictor.predict([{"image": str(r["image"]), "text": r["text"]} for r in frame_rows])
        assert [a["label"]["prediction"] for a in answers] == expected["label"].tolist()
        assert len(client.predict(table_rows)) == 3
        assert [i["name"] for i in client.model()["inputs"]] == ["text", "image", "audio", "amount", "colour"]
        with pytest.raises(ClientError) as info:
            Client(f"http://127.0.0.1:{port}", api_key="wrong-key-0123456789").predict([{}])
        assert info.value.status == 403
        with pytest.raises(ClientError) as info:
            client.predict([{"image": "/etc/passwd"}])
        assert info.value.status == 422 and info.value.problems[0]["field"] == "image"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
