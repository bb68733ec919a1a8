"""Training throughput with 1 and 2 processes (DDP): samples per second of the Lightning loop.

    .venv/bin/python bench/scale.py                     # CPU: 1 and 2 processes (gloo)
    .venv/bin/python bench/scale.py --accelerator gpu --devices 1 2 4 --precision bf16-mixed

Each run is a real `polyfuse train` in a child process on the synthetic tri-modal table (image, audio,
text, numeric, category; the small encoders of the test suite), the same global batch for every process
count (the per-process batch is global / processes), `--epochs` epochs. samples/s = training rows x epochs
/ the fit time (metrics.json training.fit_seconds: training and validation epochs, not data preparation).
On a 2-core machine shared with other jobs 2 processes cannot scale; the numbers say what happened there.
Results: bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scale.json"
SMALL_ENCODERS = {
    "image": {"name": "image.cnn", "options": {"widths": [8, 16], "blocks_per_stage": 1}},
    "audio": {"name": "audio.cnn", "options": {"widths": [8, 16]}},
    "text": {"name": "text.bigru", "options": {"embed_dim": 16, "hidden_size": 16}},
    "numeric": {"name": "numeric.mlp", "options": {"hidden_dim": 16, "output_dim": 16}},
    "category": {"name": "category.embedding", "options": {"output_dim": 8}},
}


def polyfuse(*args: str | Path, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "polyfuse.cli", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (all processes together)")
    args = parser.parse_args()

    from polyfuse.data.datasets import make_synthetic_table

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = make_synthetic_table(work / "data", n_rows=args.rows, seed=0)
        polyfuse("init", table, "--target", "label", "-o", work / "config.yaml")
        base = yaml.safe_load((work / "config.yaml").read_text())
        base["encoders"] = {k: v for k, v in SMALL_ENCODERS.items() if k in base["encoders"]}
        base["data"]["cache_dir"] = str(work / "cache")  # warm after the first run: featurising is not timed
        for devices in args.devices:
            config = json.loads(json.dumps(base))
            config["training"].update(
                epochs=args.epochs,
                batch_size=args.batch_size // devices,
                accelerator=args.accelerator,
                devices=devices,
                strategy="ddp" if devices > 1 else "auto",
                precision=args.precision,
                early_stopping_patience=None,
            )
            path = work / f"config-{devices}.yaml"
            path.write_text(yaml.safe_dump(config))
            run_dir = work / f"run-{devices}"
            # one thread per process, so 2 processes on 2 cores do not oversubscribe
            threads = str(max(1, (os.cpu_count() or 1) // devices))
            polyfuse("train", path, "-o", run_dir, "-q", env={"OMP_NUM_THREADS": threads})
            metrics = json.loads((run_dir / "model" / "metrics.json").read_text())
            training = metrics["training"]
            rows = training["train_rows"]
            runs.append(
                {
                    "processes": devices,
                    "global_batch": args.batch_size,
                    "fit_seconds": training["fit_seconds"],
                    "samples_per_second": round(rows * args.epochs / training["fit_seconds"], 1),
                    "test_accuracy": round(metrics["test"]["label"]["accuracy"], 4),
                }
            )
            print(runs[-1], flush=True)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "accelerator": args.accelerator,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": {"rows": args.rows, "epochs": args.epochs, "precision": args.precision},
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
