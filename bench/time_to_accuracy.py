"""Time to accuracy of the default AV-Digits run, against the compute floor of a plain PyTorch loop.

    .venv/bin/python bench/time_to_accuracy.py                  # init's defaults, seeds 0-2
    .venv/bin/python bench/time_to_accuracy.py --seeds 0 --epochs 10
    .venv/bin/python bench/time_to_accuracy.py --set group_by_length=true --set length_group_batches=4 \
        --tag grouped4                                           # a training setting changed, own files
    .venv/bin/python bench/time_to_accuracy.py --set data.preprocessing.audio.hop_length=160 --tag hop20

Per seed, a child process runs `polyfuse.train` on the config `polyfuse init TABLE -t label` writes (the
same as `polyfuse train` does, plus a callback that saves the weights after every epoch, its own time
left out of the clock). The parent then scores every epoch's weights on the test split, and reports:
  - seconds from the child's start (imports, data preparation and all included) until the test accuracy
    first reaches 0.99 and 0.995, and the whole run (the model directory written);
  - the fused model's final test accuracy and with the audio or the image removed from every row;
  - the child's peak RSS.
In the same run, the plain loop of bench/train_overhead.py (the same network on in-memory batches,
augmentation off) trains `--plain-epochs` epochs: its samples/s over the epochs after the first give the
compute floor of the run's epochs, and the ratio whole run / floor.
Results: bench/results/time_to_accuracy.json and .md (time_to_accuracy_TAG.* with --tag).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from polyfuse.atomic import atomic_write_text
from polyfuse.data.datasets import build_av_digits, default_data_dir
from polyfuse.init_config import init_config
from polyfuse.training.precision import resolve_precision

RESULTS = Path(__file__).parent / "results"
THRESHOLDS = (0.99, 0.995)


def child(config_path: Path, run_dir: Path) -> None:
    """Train with a callback that snapshots the weights after every epoch (validation included)."""
    import lightning as L

    import polyfuse
    from polyfuse.config import load_config

    snapshots = run_dir / "epochs"
    snapshots.mkdir(parents=True, exist_ok=True)

    class EpochSnapshots(L.Callback):
        def __init__(self) -> None:
            self.own_seconds = 0.0  # time spent saving, left out of the clock
            self.epochs: list[dict[str, float]] = []

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            start = time.time()
            torch.save(pl_module.model.state_dict(), snapshots / f"{trainer.current_epoch}.pt")
            self.epochs.append({"epoch": trainer.current_epoch, "at": start - self.own_seconds})
            self.own_seconds += time.time() - start

    callback = EpochSnapshots()
    polyfuse.train(load_config(config_path), run_dir, show_progress=False, callbacks=[callback])
    done = time.time() - callback.own_seconds
    (snapshots / "times.json").write_text(json.dumps({"epochs": callback.epochs, "done": done}))


def accuracy(predictor: Any, test: pd.DataFrame, base_dir: Path, drop: str | None = None) -> float:
    rows = test.drop(columns=[drop]) if drop else test
    predicted = predictor.predict(rows, base_dir=base_dir)["label"].astype(str)
    return float((predicted.to_numpy() == test["label"].astype(str).to_numpy()).mean())


def configured(table: Path, config_path: Path, work: Path, updates: dict[str, Any]) -> Any:
    """init's config for the table with `updates` over it, written to config_path."""
    config = init_config(table, ["label"], config_path)
    tree = config.model_dump(mode="json")
    for key, value in updates.items():
        # a plain key is a training setting; a dotted one a path from the config's root
        *parents, leaf = key.split(".") if "." in key else ["training", key]
        node = tree
        for depth, part in enumerate(parents):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise SystemExit(f"--set {key}: no '{'.'.join(parents[: depth + 1])}' in the config; {known}")
            node = node[part]
        node[leaf] = value
    tree["data"]["cache_dir"] = str(work / "cache")
    config = type(config).model_validate(tree)
    config_path.write_text(config.to_yaml())
    return config


def one_seed(
    table: Path, work: Path, seed: int, epochs: int | None, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    from fusion import run_child  # bench/ is on sys.path when this file runs as a script

    import polyfuse

    config_path = work / f"seed{seed}.yaml"
    updates = {**(settings or {}), "seed": seed, **({"epochs": epochs} if epochs else {})}
    configured(table, config_path, work, updates)
    run_dir = work / f"seed{seed}"
    started = time.time()
    seconds, rss_mb, code = run_child(
        [sys.executable, __file__, "--child", str(config_path), str(run_dir)], work / f"seed{seed}.log"
    )
    if code != 0:
        raise RuntimeError(f"seed {seed} failed:\n" + (work / f"seed{seed}.log").read_text()[-3000:])
    times = json.loads((run_dir / "epochs" / "times.json").read_text())
    frame = pd.read_csv(table)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    predictor = polyfuse.load(run_dir / "model")
    final = accuracy(predictor, test, table.parent)
    without = {
        f"accuracy_without_{m}": accuracy(predictor, test, table.parent, m) for m in ("audio", "image")
    }
    curve = []
    for entry in times["epochs"]:
        weights = torch.load(run_dir / "epochs" / f"{entry['epoch']}.pt", weights_only=True)
        predictor.model.load_state_dict(weights)
        curve.append(
            {
                "epoch": entry["epoch"] + 1,
                "seconds": round(entry["at"] - started, 1),
                "test_accuracy": round(accuracy(predictor, test, table.parent), 4),
            }
        )
    reached = {
        f"seconds_to_{t}": next((c["seconds"] for c in curve if c["test_accuracy"] >= t), None)
        for t in THRESHOLDS
    }
    return {
        "seed": seed,
        "epochs_run": len(curve),
        "test_accuracy": round(final, 4),
        **{k: round(v, 4) for k, v in without.items()},
        **reached,
        "whole_run_seconds": round(seconds, 1),
        "peak_rss_mb": rss_mb,
        "curve": curve,
    }


def plain_floor(config: Any, epochs: int) -> tuple[float, int]:
    """Samples/s of bench/train_overhead.py's plain loop on the runs' network and precision (`config`,
    after its first epoch), and the number of training rows."""
    from train_overhead import plain_loop

    from polyfuse.data.prepare import prepare_data
    from polyfuse.training.data import make_loader

    prepared = prepare_data(config.data, show_progress=False)
    loader = make_loader(
        prepared.split("train"), prepared.preprocessor, batch_size=config.training.batch_size, train=False
    )
    torch.use_deterministic_algorithms(True)  # as Lightning's deterministic=True does in the runs
    batches = list(loader)
    return plain_loop(config, prepared.preprocessor, batches, epochs), sum(len(b) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: init's")
    parser.add_argument("--plain-epochs", type=int, default=3, help="the first is warm-up, not counted")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting over init's (YAML value): a training setting, e.g. group_by_length=true, or a "
        "dotted path from the config's root, e.g. encoders.audio.options.widths=[32,64,128]; repeatable",
    )
    parser.add_argument("--tag", default="", help="results go to time_to_accuracy_TAG.json / .md")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="polyfuse-tta-"))
    work.mkdir(parents=True, exist_ok=True)
    table = work / "av" / "av_digits.csv"
    if not table.is_file():
        table = build_av_digits(work / "av", args.data or default_data_dir())
    settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    # the plain loop's config (the runs' without a seed) and what it trains in, resolved before any run so
    # that a mistake fails fast
    plain_config = configured(table, work / "plain.yaml", work, settings)
    precision = "{} ({})".format(*resolve_precision(plain_config))
    runs = [one_seed(table, work, seed, args.epochs, settings) for seed in args.seeds]
    plain, train_rows = plain_floor(plain_config, args.plain_epochs)
    floor = statistics.mean(r["epochs_run"] for r in runs) * train_rows / plain
    whole = statistics.mean(r["whole_run_seconds"] for r in runs)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "settings_over_init": settings,
        "precision": precision,
        "train_rows": train_rows,
        "runs": runs,
        "mean": {
            key: round(statistics.mean(r[key] for r in runs), 4)
            for key in (
                "test_accuracy",
                "accuracy_without_audio",
                "accuracy_without_image",
                "whole_run_seconds",
                "peak_rss_mb",
            )
        },
        "plain_loop_samples_per_s": round(plain, 1),
        "plain_loop_seconds_for_the_same_epochs": round(floor, 1),
        "whole_run_over_plain_loop": round(whole / floor, 2),
    }
    for t in THRESHOLDS:
        reached = [r[f"seconds_to_{t}"] for r in runs]
        result["mean"][f"seconds_to_{t}"] = (
            round(statistics.mean(reached), 1) if all(s is not None for s in reached) else None
        )
    write(result, f"time_to_accuracy_{args.tag}" if args.tag else "time_to_accuracy")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


def write(result: dict[str, Any], stem: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(result, indent=2))
    mean = result["mean"]
    lines = [
        "# Time to accuracy, default AV-Digits run",
        "",
        f"Machine: {result['machine']}; settings over init's: {result['settings_over_init'] or 'none'}; "
        f"precision: {result['precision']}",
        "",
        "| seed | epochs | test accuracy | without audio | without image | s to 0.99 | s to 0.995 | whole run s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {r['epochs_run']} | {r['test_accuracy']} | {r['accuracy_without_audio']} | "
            f"{r['accuracy_without_image']} | {r['seconds_to_0.99']} | {r['seconds_to_0.995']} | "
            f"{r['whole_run_seconds']} | {r['peak_rss_mb']} |"
        )
    lines += [
        f"| mean | | {mean['test_accuracy']} | {mean['accuracy_without_audio']} | "
        f"{mean['accuracy_without_image']} | {mean['seconds_to_0.99']} | {mean['seconds_to_0.995']} | "
        f"{mean['whole_run_seconds']} | {mean['peak_rss_mb']} |",
        "",
        f"Plain PyTorch loop (same network, in-memory batches, no augmentation): "
        f"{result['plain_loop_samples_per_s']} samples/s, i.e. {result['plain_loop_seconds_for_the_same_epochs']}"
        f" s for the runs' epochs; whole run / that floor: {result['whole_run_over_plain_loop']}×.",
        "",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines))


if __name__ == "__main__":
    main()
