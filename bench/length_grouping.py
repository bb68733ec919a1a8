"""Length-grouped batching (`training.group_by_length`) against random batches, in the same run.

    .venv/bin/python bench/length_grouping.py              # audio-only AV-Digits, seeds 0-2
    .venv/bin/python bench/length_grouping.py --inputs fused --seeds 0

FSDD clips last 0.44 s on average but up to 2.3 s, and a batch is padded to its longest clip, so most
frames an audio encoder sees in a random batch are padding. Each run is a real `polyfuse train` in a
child process (config from `polyfuse init`), first with random batches, then grouped, per seed; the
bench reports the padded share of audio frames per epoch, training time, whole-run wall time, peak RSS
and test accuracy, and the grouped/random speed ratio. Writes bench/results/length_grouping.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from fusion import run_child  # bench/fusion.py: wall time and peak RSS of a child process

from polyfuse.atomic import atomic_write_text
from polyfuse.config import RunConfig
from polyfuse.data.datasets import build_av_digits, default_data_dir
from polyfuse.data.prepare import prepare_data
from polyfuse.init_config import init_config
from polyfuse.training.data import make_loader

RESULTS = Path(__file__).parent / "results" / "length_grouping.json"


def padded_share(config: RunConfig, grouped: bool) -> float:
    """Share of audio frames in one training epoch's batches that are padding."""
    prepared = prepare_data(config.data, show_progress=False)
    loader = make_loader(
        prepared.split("train"),
        prepared.preprocessor,
        batch_size=config.training.batch_size,
        train=True,
        seed=config.training.seed,
        group_by_length=grouped,
    )
    padding = frames = 0
    for batch in loader:
        audio = batch.inputs["audio"]
        assert audio.token_mask is not None  # (B, T): True on real frames
        mask = audio.token_mask[audio.present]
        padding += int((~mask).sum())
        frames += mask.numel()
    return padding / frames


def configure(
    table: Path, work: Path, inputs: str, seed: int, grouped: bool, epochs: int
) -> tuple[Path, RunConfig]:
    config = init_config(table, ["label"], work / "init.yaml")
    columns, encoders = dict(config.data.columns), dict(config.encoders)
    if inputs == "audio":
        columns["image"] = "ignore"
        encoders.pop("image")
    training = config.training.model_copy(update={"epochs": epochs, "seed": seed, "group_by_length": grouped})
    data = config.data.model_copy(update={"columns": columns, "cache_dir": work / "cache"})
    config = config.model_copy(update={"data": data, "encoders": encoders, "training": training})
    path = work / f"{inputs}-{'grouped' if grouped else 'random'}-seed{seed}.yaml"
    path.write_text(config.to_yaml())
    return path, config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", choices=["audio", "fused"], default="audio")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data", type=Path, default=None, help="folder with mnist/ and fsdd/")
    parser.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temp folder)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="polyfuse-grouping-"))
    work.mkdir(parents=True, exist_ok=True)
    table = build_av_digits(work / "av-digits", args.data or default_data_dir())
    runs: list[dict[str, Any]] = []
    share = {}
    for seed in args.seeds:
        for grouped in (False, True):
            config_path, config = configure(table, work, args.inputs, seed, grouped, args.epochs)
            name = config_path.stem
            if grouped not in share:
                share[grouped] = round(padded_share(config, grouped), 4)
            command = [
                sys.executable,
                "-m",
                "polyfuse.cli",
                "train",
                str(config_path),
                "-o",
                str(work / name),
            ]
            seconds, rss_mb, code = run_child(command, work / f"{name}.log")
            if code != 0:
                raise RuntimeError(f"{name} failed; see {work / f'{name}.log'}")
            metrics = json.loads((work / name / "metrics.json").read_text())
            runs.append(
                {
                    "seed": seed,
                    "batches": "grouped" if grouped else "random",
                    "test_accuracy": round(metrics["test"]["label"]["accuracy"], 4),
                    "train_seconds": metrics["training"]["seconds"],
                    "whole_run_seconds": round(seconds, 1),
                    "peak_rss_mb": rss_mb,
                }
            )
            print(json.dumps(runs[-1]), flush=True)

    def mean(batches: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs if r["batches"] == batches)

    result = {
        "inputs": args.inputs,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "padded_audio_frames_share": {"random": share[False], "grouped": share[True]},
        "train_speedup_grouped_over_random": round(
            mean("random", "train_seconds") / mean("grouped", "train_seconds"), 2
        ),
        "peak_rss_mb": {
            "random": max(r["peak_rss_mb"] for r in runs if r["batches"] == "random"),
            "grouped": max(r["peak_rss_mb"] for r in runs if r["batches"] == "grouped"),
        },
        "test_accuracy_mean": {
            "random": round(mean("random", "test_accuracy"), 4),
            "grouped": round(mean("grouped", "test_accuracy"), 4),
        },
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 run at a time",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
