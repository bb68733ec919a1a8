"""Load on `polyfuse serve`: throughput and latency with micro-batching on and off, on loopback.

    .venv/bin/python bench/serve_load.py                    # build AV-Digits, train, serve, measure
    .venv/bin/python bench/serve_load.py --seconds 5        # shorter measurements

The model: AV-Digits (MNIST image + spoken digit audio → digit), `polyfuse init TABLE -t label` with its
defaults (image.cnn + audio.cnn, gated fusion) trained with `polyfuse train` for `--epochs` epochs (1 by
default: this measures serving, not accuracy), in a child process. The table and the model are kept in
`--work` and reused by the next run.

For batching on (`polyfuse serve`'s defaults: 32 rows, 5 ms) and off (`--no-batching`), a server process
on 127.0.0.1 gets 1, 8 and 32 concurrent clients (asyncio + httpx, one keep-alive connection each), each
sending one-row JSON requests (a test-split image and audio clip, base64) back to back for `--seconds`
after a warm-up. Per setting: requests per second, p50 / p99 latency, 5xx and other failures; the
throughput ratio on / off per client count; the single-row p50 latency of one client once warm.
Results: bench/results/serve_load.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import torch
import yaml

from polyfuse.atomic import atomic_write_text
from polyfuse.data.datasets import build_av_digits, default_data_dir

RESULTS = Path(__file__).parent / "results"
CLI = [sys.executable, "-m", "polyfuse.cli"]
CLIENTS = (1, 8, 32)


def run_cli(*args: str, log: Path) -> None:
    with log.open("w") as out:
        code = subprocess.run([*CLI, *args], stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"polyfuse {' '.join(args)} failed; {log}:\n{log.read_text()[-3000:]}")


def trained_model(work: Path, epochs: int) -> tuple[Path, Path, float | None]:
    """(table, model dir, training seconds or None when reused)."""
    table = work / "av" / "av_digits.csv"
    if not table.exists():
        build_av_digits(work / "av", default_data_dir())
    model = work / "run" / "model"
    if (model / "model.safetensors").exists():
        return table, model, None
    config = work / "serve.yaml"
    run_cli("init", str(table), "-t", "label", "-o", str(config), "--force", log=work / "init.log")
    raw = yaml.safe_load(config.read_text())
    raw["training"]["epochs"] = epochs
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.perf_counter()
    run_cli("train", str(config), "-o", str(work / "run"), log=work / "train.log")
    return table, model, time.perf_counter() - started


def request_bodies(table: Path, count: int) -> list[bytes]:
    frame = pd.read_csv(table)
    test = frame[frame["split"] == "test"].head(count)
    bodies = []
    for record in test.to_dict("records"):
        row = {
            column: base64.b64encode((table.parent / record[column]).read_bytes()).decode()
            for column in ("image", "audio")
        }
        bodies.append(json.dumps({"rows": [row]}).encode())
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, batching: bool, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [*CLI, "serve", str(model), "--port", str(port), "--max-pending", "256"]
    if not batching:
        args.append("--no-batching")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited; {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready")


async def load(port: int, bodies: list[bytes], clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    """`clients` concurrent loops of one-row requests; latencies of those that finished in the window."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:

        async def client(offset: int) -> None:
            nonlocal failures
            i = offset
            while time.perf_counter() < stop_at:
                body = bodies[i % len(bodies)]
                i += clients
                sent = time.perf_counter()
                try:
                    response = await http.post("/v1/predict", content=body, headers=headers)
                    status: int | None = response.status_code
                except httpx.HTTPError:
                    status = None
                done = time.perf_counter()
                if sent < measure_from or done > stop_at:
                    continue
                if status is None:
                    failures += 1
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(done - sent)

        await asyncio.gather(*(client(c) for c in range(clients)))
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests_ok": len(latencies),
        "throughput_rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "connection_failures": failures,
    }


def batch_sizes(port: int) -> dict[str, float]:
    """Mean rows and requests per forward pass so far, from the server's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("polyfuse_batch_rows_", "polyfuse_batch_requests_")) and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def measure(model: Path, bodies: list[bytes], work: Path, warmup: float, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for batching in (True, False):
        mode = "batching_on" if batching else "batching_off"
        process, port = start_server(model, batching, work / f"serve-{mode}.log")
        try:
            per_clients = {}
            for clients in CLIENTS:
                before = batch_sizes(port)
                outcome = asyncio.run(load(port, bodies, clients, warmup, seconds))
                after = batch_sizes(port)
                passes = after.get("polyfuse_batch_rows_count", 0) - before.get(
                    "polyfuse_batch_rows_count", 0
                )
                rows = after.get("polyfuse_batch_rows_sum", 0) - before.get("polyfuse_batch_rows_sum", 0)
                outcome["mean_rows_per_forward"] = round(rows / passes, 2) if passes else None
                per_clients[str(clients)] = outcome
                print(f"{mode} {clients:>2} clients: {outcome}", flush=True)
            results[mode] = per_clients
        finally:
            process.send_signal(signal.SIGTERM)
            results.setdefault("shutdown_exit_codes", {})[mode] = process.wait(timeout=120)
    return results


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "serve_load.json", json.dumps(results, indent=2) + "\n")
    on, off = results["batching_on"], results["batching_off"]
    lines = [
        "# Serving load on AV-Digits",
        "",
        f"Machine: {results['machine']}. Model: {results['model']}. {results['method']}",
        f"Load average (1 min) before / after: {results['load_before']} / {results['load_after']}.",
        "",
        "| clients | batching | req/s | p50 ms | p99 ms | rows per forward | 5xx | on/off throughput |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for clients in CLIENTS:
        key = str(clients)
        for mode, row in (("on", on[key]), ("off", off[key])):
            ratio = f"{results['throughput_ratio_on_off'][key]}×" if mode == "on" else ""
            lines.append(
                f"| {clients} | {mode} | {row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} | "
                f"{row['mean_rows_per_forward']} | {row['server_errors_5xx']} | {ratio} |"
            )
    lines += [
        "",
        f"Single-row p50 latency, one client, warm: {results['single_row_p50_ms']['batching_on']} ms with "
        f"batching on, {results['single_row_p50_ms']['batching_off']} ms off.",
        f"5xx over every run: {results['total_5xx']}. Shutdown exit codes: {results['shutdown_exit_codes']}.",
        "",
    ]
    atomic_write_text(RESULTS / "serve_load.md", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "polyfuse-serve-load")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per setting")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table, model, train_seconds = trained_model(args.work, args.epochs)
    bodies = request_bodies(table, 200)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "load_before": round(os.getloadavg()[0], 2),  # 1-min load average: others' jobs on a shared box
        "model": f"AV-Digits, polyfuse init defaults, {args.epochs} epochs"
        + (f" (trained in {train_seconds:.0f} s)" if train_seconds else " (reused)"),
        "method": f"one-row JSON requests (image + audio, base64), {args.warmup:.0f} s warm-up then "
        f"{args.seconds:.0f} s measured per setting; server and clients on the same machine",
        "metrics": json.loads((model / "metrics.json").read_text()).get("test", {}),
    }
    results.update(measure(model, bodies, args.work, args.warmup, args.seconds))
    results["load_after"] = round(os.getloadavg()[0], 2)
    on, off = results["batching_on"], results["batching_off"]
    results["throughput_ratio_on_off"] = {
        str(c): round(on[str(c)]["throughput_rps"] / max(off[str(c)]["throughput_rps"], 1e-9), 2)
        for c in CLIENTS
    }
    results["single_row_p50_ms"] = {"batching_on": on["1"]["p50_ms"], "batching_off": off["1"]["p50_ms"]}
    results["total_5xx"] = sum(r["server_errors_5xx"] for mode in (on, off) for r in mode.values())
    write(results)
    print(json.dumps({k: results[k] for k in ("throughput_ratio_on_off", "single_row_p50_ms", "total_5xx")}))


if __name__ == "__main__":
    main()
