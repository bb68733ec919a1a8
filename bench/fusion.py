"""Fusion methods against single-modality models on AV-Digits (clean) or AV-Digits-N (noisy).

    .venv/bin/python bench/fusion.py --variant noisy     # every fusion + image-only + audio-only, 3 seeds
    .venv/bin/python bench/fusion.py --variant clean --fusions gated   # the Ludwig comparison

Each run is a real `polyfuse train` in a child process (config from `polyfuse init`, then the named
fusion, seed and input subset), so its wall time and peak RSS are the user's. For fused runs the bench
also scores the test rows with the audio (or image) removed. Results go to
bench/results/fusion_<variant>.json and .md, rewritten after every run so a partial sweep is kept.
`--robustness` then adds robustness curves of each fused model against the late-fusion baseline of its
seed (bench/fusion_robustness.py; bench/results/fusion_<variant>_robustness.json and .md).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from polyfuse.atomic import atomic_write_text
from polyfuse.data.datasets import build_av_digits, default_data_dir
from polyfuse.init_config import init_config
from polyfuse.models.fusion import list_fusions

RESULTS = Path(__file__).parent / "results"


def run_child(command: list[str], log: Path) -> tuple[float, int, int]:
    """Run a command; return (wall seconds, peak RSS in MB, exit code)."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, int(usage.ru_maxrss / 1024), process.returncode


def one_run(
    variant: str, table: Path, work: Path, args: argparse.Namespace, inputs: str, fusion: str, seed: int
) -> dict[str, Any]:
    name = f"{inputs}-{fusion}-seed{seed}"
    config_path = work / f"{name}.yaml"
    # the same setup for every fusion (init's for redundant inputs), so only the fusion differs
    config = init_config(table, ["label"], config_path, fusion=fusion, probe=False)
    columns = dict(config.data.columns)
    encoders = dict(config.encoders)
    if inputs != "fused":
        dropped = "audio" if inputs == "image" else "image"
        columns[dropped] = "ignore"
        encoders.pop(dropped)
    training = config.training.model_copy(
        update={
            "epochs": args.epochs,
            "seed": seed,
            "num_workers": args.num_workers,
            "deterministic": args.deterministic,
            "accelerator": args.accelerator,
        }
    )
    data = config.data.model_copy(update={"columns": columns, "cache_dir": work / "cache"})
    config = config.model_copy(update={"data": data, "encoders": encoders, "training": training})
    config_path.write_text(config.to_yaml())
    run_dir = work / name
    cli = [sys.executable, "-m", "polyfuse.cli"]
    seconds, rss_mb, code = run_child(
        [*cli, "train", str(config_path), "-o", str(run_dir)], work / f"{name}.log"
    )
    if code != 0:
        raise RuntimeError(
            f"{name} failed; see {work / f'{name}.log'}:\n" + (work / f"{name}.log").read_text()[-3000:]
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result: dict[str, Any] = {
        "variant": variant,
        "inputs": inputs,
        "fusion": fusion if inputs == "fused" else "-",
        "seed": seed,
        "test_accuracy": metrics["test"]["label"]["accuracy"],
        "epochs": metrics["training"]["epochs"],
        "parameters": metrics["training"]["parameters"],
        "train_seconds": metrics["training"]["seconds"],
        "whole_run_seconds": round(seconds, 1),
        "peak_rss_mb": rss_mb,
    }
    if inputs == "fused":
        result.update(missing_modality_accuracy(run_dir / "model", table))
        start = time.perf_counter()
        subprocess.run(
            [
                *cli,
                "predict",
                str(run_dir / "model"),
                str(table),
                "--split",
                "test",
                "-o",
                str(work / f"{name}.csv"),
            ],
            check=True,
            capture_output=True,
        )
        result["predict_300_rows_seconds"] = round(time.perf_counter() - start, 2)
    return result


def missing_modality_accuracy(model_dir: Path, table: Path) -> dict[str, float]:
    """Test accuracy of the fused model when every test row lacks its audio, or its image."""
    import polyfuse

    predictor = polyfuse.load(model_dir)
    frame = pd.read_csv(table)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    out = {}
    for removed in ("audio", "image"):
        rows = test.drop(columns=[removed]).to_dict("records")
        predicted = predictor.predict(rows, base_dir=table.parent)["label"].astype(str)
        out[f"accuracy_without_{removed}"] = round(float((predicted == test["label"].astype(str)).mean()), 4)
    return out


def summarise(results: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(results)
    rows = []
    for (inputs, fusion), group in frame.groupby(["inputs", "fusion"], sort=False):
        accuracy = group["test_accuracy"].tolist()
        row = {
            "model": f"{inputs} ({fusion})" if inputs == "fused" else f"{inputs} only",
            "test accuracy": f"{statistics.mean(accuracy):.4f} ± {statistics.stdev(accuracy) if len(accuracy) > 1 else 0:.4f}",
            "seeds": len(group),
            "parameters": int(group["parameters"].iloc[0]),
            "train s (mean)": round(group["train_seconds"].mean(), 1),
            "whole run s (mean)": round(group["whole_run_seconds"].mean(), 1),
            "peak RSS MB (max)": int(group["peak_rss_mb"].max()),
            "machine": ", ".join(
                sorted({str(m).split(", ")[-1] for m in group.get("machine", pd.Series(["?"]))})
            ),
        }
        for column in ("accuracy_without_audio", "accuracy_without_image", "predict_300_rows_seconds"):
            if column in group and group[column].notna().any():
                row[column.replace("_", " ")] = round(group[column].mean(), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    cell = lambda v: "–" if v is None or (isinstance(v, float) and v != v) else str(v)  # noqa: E731
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", choices=["clean", "noisy"], default="noisy")
    parser.add_argument("--data", type=Path, default=None, help="folder with mnist/ and fsdd/")
    parser.add_argument(
        "--fusions", nargs="*", default=list_fusions(), help="none: single-modality runs only"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--single", action=argparse.BooleanOptionalAction, default=True, help="image-only and audio-only runs"
    )
    parser.add_argument(
        "--single-inputs",
        nargs="+",
        choices=["image", "audio"],
        default=["image", "audio"],
        help="which single-modality runs --single makes (e.g. only image after an image-only change)",
    )
    parser.add_argument(
        "--parallel", type=int, default=1, help="runs at once (use 1 for timings on small machines)"
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temp folder)")
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="then robustness curves: each fused model against its seed's late-fusion baseline",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to the existing results file (e.g. runs from another machine)",
    )
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="polyfuse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    table = build_av_digits(
        work / f"av-digits-{args.variant}", args.data or default_data_dir(), variant=args.variant
    )
    plan = [("fused", f, s) for f in args.fusions for s in args.seeds]
    if args.single:
        plan += [(m, "gated", s) for m in args.single_inputs for s in args.seeds]
    results: list[dict[str, Any]] = []
    kept: dict[str, Any] = {}  # other keys of an appended file (e.g. runs under earlier defaults)
    previous = RESULTS / f"fusion_{args.variant}.json"
    if args.append and previous.exists():
        kept = json.loads(previous.read_text())
        results = kept.pop("runs")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    )

    def record(result: dict[str, Any]) -> None:
        results.append({**result, "machine": machine, "parallel_runs": args.parallel})
        print(json.dumps(result), flush=True)
        summary = summarise(results)
        meta = {**kept, "variant": args.variant, "epochs": args.epochs}
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            RESULTS / f"fusion_{args.variant}.json", json.dumps({**meta, "runs": results}, indent=2)
        )
        machines = sorted(
            {f"{r.get('machine', '?')} ({r.get('parallel_runs', '?')} run(s) at a time)" for r in results}
        )
        header = f"AV-Digits ({args.variant}), {args.epochs} epochs max. Machines: {'; '.join(machines)}\n\n"
        atomic_write_text(RESULTS / f"fusion_{args.variant}.md", header + markdown_table(summary) + "\n")

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        for result in pool.map(lambda p: one_run(args.variant, table, work, args, *p), plan):
            record(result)
    print((RESULTS / f"fusion_{args.variant}.md").read_text())
    if args.robustness:
        from fusion_robustness import write_robustness  # bench/ is on sys.path when run as a script

        done = write_robustness(work, table, args.variant, fusions=args.fusions, seeds=args.seeds)
        print(done.read_text())


if __name__ == "__main__":
    main()
