"""Wall time of a whole `polyfuse predict` command on 300 AV-Digits rows: start-up, model load, prediction.

    .venv/bin/python bench/predict_startup.py                 # build AV-Digits, train 1 epoch, measure
    .venv/bin/python bench/predict_startup.py --model DIR --table CSV
    .venv/bin/python bench/predict_startup.py --baseline-src /tmp/old/src   # another version, same run

The command measured is the one a user types, `polyfuse predict MODEL TABLE --split test -o out.csv`
(`python -m polyfuse.cli`, a fresh process each time), on the 300 test rows of the AV-Digits table. The
model is `polyfuse init` defaults on that table (image.cnn + audio.cnn, gated fusion) trained for one epoch
(the weights' values do not change the time); the table and model are kept in `--work` and reused, and
bench/serve_load.py uses the same folder by default. Each of `--runs` runs (5) records wall time, user +
system CPU time and peak RSS of the child; the median is reported. `import polyfuse.cli` and
`import polyfuse.commands` alone are timed the same way, to show how much is start-up. With
`--baseline-src`, the same commands run with that `src` folder first on PYTHONPATH, interleaved with the
current code's runs, so that both see the same machine load. The load average before and after is
recorded: on a shared machine wall times grow with it, CPU times much less.
Results: bench/results/predict_startup.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_load import trained_model

from polyfuse.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def timed_child(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds, user + system CPU seconds and peak RSS (MB) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{stderr[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    return {
        "wall_s_median": round(statistics.median(walls), 2),
        "wall_s_min": round(min(walls), 2),
        "wall_s_max": round(max(walls), 2),
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 2),
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in runs)),
        "runs": len(runs),
    }


def commands(model: Path, table: Path, output: Path) -> dict[str, list[str]]:
    python = [sys.executable]
    return {
        "predict_300_rows": [
            *python,
            "-m",
            "polyfuse.cli",
            "predict",
            str(model),
            str(table),
            "--split",
            "test",
            "-o",
            str(output),
        ],
        "import_polyfuse_cli": [*python, "-c", "import polyfuse.cli"],
        "import_predict_path": [*python, "-c", "import polyfuse.cli, polyfuse.commands"],
    }


def environment(src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def measure(model: Path, table: Path, work: Path, runs: int, baseline: Path | None) -> dict[str, Any]:
    versions: dict[str, Path | None] = {"current": None}
    if baseline is not None:
        versions["baseline"] = baseline
    raw: dict[str, dict[str, list[dict[str, float]]]] = {v: {} for v in versions}
    for version, src in versions.items():  # one untimed run each: the page cache holds the files after
        timed_child(commands(model, table, work / f"{version}.csv")["predict_300_rows"], environment(src))
    for run in range(runs):
        for version, src in versions.items():
            for name, args in commands(model, table, work / f"{version}.csv").items():
                outcome = timed_child(args, environment(src))
                raw[version].setdefault(name, []).append(outcome)
                print(f"run {run + 1}/{runs} {version} {name}: {outcome['wall_s']:.2f} s wall", flush=True)
    return {version: {name: summary(r) for name, r in per.items()} for version, per in raw.items()}


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "predict_startup.json", json.dumps(results, indent=2) + "\n")
    lines = [
        "# `polyfuse predict` start-up on AV-Digits",
        "",
        f"Machine: {results['machine']}. Model: {results['model']}. {results['method']}",
        f"Load average (1 min) before / after: {results['load_before']} / {results['load_after']}.",
        "",
        "| version | command | wall s (median) | min / max | CPU s (median) | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for version in ("current", "baseline"):
        for name, row in results.get(version, {}).items():
            lines.append(
                f"| {version} | {name} | {row['wall_s_median']} | {row['wall_s_min']} / {row['wall_s_max']} | "
                f"{row['cpu_s_median']} | {row['peak_rss_mb_median']} |"
            )
    if "baseline" in results:
        lines += ["", f"Baseline: {results['baseline_src']}."]
    lines.append("")
    atomic_write_text(RESULTS / "predict_startup.md", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "polyfuse-serve-load")
    parser.add_argument("--model", type=Path, help="a trained AV-Digits model directory (else trained)")
    parser.add_argument("--table", type=Path, help="its AV-Digits table (with the model)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-src", type=Path, help="another version's src folder, timed alongside")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if (args.model is None) != (args.table is None):
        parser.error("give --model and --table together")
    if args.model is not None:
        table, model, trained = args.table, args.model, "given"
    else:
        table, model, seconds = trained_model(args.work, epochs=1)
        trained = f"trained in {seconds:.0f} s" if seconds else "reused"
    load_before = round(os.getloadavg()[0], 2)
    measured = measure(model, table, args.work, args.runs, args.baseline_src)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "model": f"AV-Digits, polyfuse init defaults, 1 epoch ({trained})",
        "method": f"`polyfuse predict MODEL TABLE --split test` (300 rows), a fresh process per run, "
        f"median of {args.runs} runs after one untimed run",
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        **measured,
    }
    if args.baseline_src is not None:
        results["baseline_src"] = str(args.baseline_src)
    write(results)
    print(json.dumps({v: results[v]["predict_300_rows"] for v in measured}))


if __name__ == "__main__":
    main()
