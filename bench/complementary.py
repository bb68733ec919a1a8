"""Complementary modalities: tables whose answer needs both inputs together, built from AV-Digits.

    .venv/bin/python bench/complementary.py                                   # everything below
    .venv/bin/python bench/complementary.py --tables questions --runs defaults --seeds 0

Tables (see `polyfuse.data.datasets.complementary`; each states its Bayes accuracy, 1.0, and the best
accuracy from either input alone):
  questions  an MNIST image + a question about it with negations and comparisons → yes / no
  spoken     an MNIST image + an FSDD recording of another digit → "is the spoken digit larger?"

Runs (each a real `polyfuse init` + `polyfuse train` in a child process):
  defaults   `polyfuse init TABLE -t answer` as it is (its input probe chooses the setup), every seed
  fusions    every registered fusion with init's other choices, first seed
  text       (questions only) the question encoder: frozen MiniLM (init's), MiniLM fine-tuned, and the
             small from-scratch text.bigru, with init's fusion, first seed
Results: bench/results/complementary.json and .md, rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from alignment import polyfuse  # the same child-process runner as the alignment bench (bench/ is on sys.path)

from polyfuse.atomic import atomic_write_text
from polyfuse.data.datasets import (
    build_av_digits,
    build_digit_questions,
    build_spoken_vs_written,
    default_data_dir,
)
from polyfuse.models.fusion import list_fusions

RESULTS = Path(__file__).parent / "results"
TEXT_VARIANTS = {
    "minilm_frozen": {"name": "text.minilm", "trainable": False},
    # a pretrained transformer at the head's learning rate (init's 2e-3) fell to chance within 4 epochs
    "minilm_finetuned": {"name": "text.minilm", "trainable": True, "learning_rate": 2e-5},
    "bigru_scratch": {"name": "text.bigru", "trainable": True},
    "transformer_scratch": {"name": "text.transformer", "trainable": True},
}


def run(
    table: Path, work: Path, name: str, init_args: list[str], edit: Any, epochs: int | None
) -> dict[str, Any]:
    config = work / f"{name}.yaml"
    polyfuse(
        "init",
        str(table),
        "-t",
        "answer",
        *init_args,
        "-o",
        str(config),
        "--force",
        log=work / f"{name}-init.log",
    )
    text = config.read_text()
    chose = [line[2:] for line in text.splitlines() if line.startswith("# polyfuse init chose")]
    raw = yaml.safe_load(text)
    if epochs is not None:  # else init's own choice, which depends on the table
        raw["training"]["epochs"] = epochs
    raw["data"]["cache_dir"] = str(work / "cache")
    edit(raw)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    seconds = polyfuse("train", str(config), "-o", str(work / name), log=work / f"{name}.log")
    metrics = json.loads((work / name / "metrics.json").read_text())
    return {
        "fusion": raw["fusion"]["name"],
        "modality_dropout": raw["fusion"]["modality_dropout"],
        "aux_loss_weight": raw["training"]["aux_loss_weight"],
        "text_encoder": {
            k: v["name"] + ("" if v["trainable"] else " (frozen)") for k, v in raw["encoders"].items()
        },
        "test_accuracy": round(metrics["test"]["answer"]["accuracy"], 4),
        "epochs_set": raw["training"]["epochs"],
        "epochs_run": metrics["training"]["epochs"],
        "whole_run_seconds": round(seconds, 1),
        "init_chose": chose,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", nargs="+", default=["questions", "spoken"])
    parser.add_argument("--runs", nargs="+", default=["defaults", "fusions", "text"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--fusions", nargs="+", default=None, help="fusions run: these (default: every registered one)"
    )
    parser.add_argument(
        "--text-variants", nargs="+", default=list(TEXT_VARIANTS), choices=list(TEXT_VARIANTS)
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: what init chose")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="polyfuse-complementary-"))
    work.mkdir(parents=True, exist_ok=True)
    av = work / "av" / "av_digits.csv"
    if not av.is_file():
        av = build_av_digits(work / "av", args.data or default_data_dir())
    builders = {"questions": build_digit_questions, "spoken": build_spoken_vs_written}
    path = RESULTS / "complementary.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    for name in args.tables:
        table = builders[name](av)
        entry = results.setdefault(name, {})
        entry["table"] = json.loads(table.with_suffix(".json").read_text())
        plan: list[tuple[str, list[str], Any]] = []
        if "defaults" in args.runs:
            for seed in args.seeds:
                plan.append(
                    (f"defaults-seed{seed}", [], lambda raw, seed=seed: raw["training"].update(seed=seed))
                )
        if "fusions" in args.runs:
            for fusion in args.fusions or list_fusions():
                # `init --fusion` swaps only the fusion: epochs, dropout, heads and early stopping
                # still follow init's probe of this table
                plan.append((f"fusion-{fusion}", ["--fusion", fusion], lambda raw: None))
        if "text" in args.runs and name == "questions":
            for variant in args.text_variants:
                encoder = TEXT_VARIANTS[variant]
                plan.append(
                    (
                        f"text-{variant}",
                        [],
                        lambda raw, e=encoder: raw["encoders"]["question"].update(e),
                    )
                )
        for label, init_args, edit in plan:
            print(f"{name} {label} ...", flush=True)
            found = run(table, work, f"{name}-{label}", init_args, edit, args.epochs)
            # re-read: runs of other seeds may be going on at once in other processes (other --work)
            results = {
                **(json.loads(path.read_text()) if path.exists() else {}),
                "machine": results["machine"],
            }
            entry = results.setdefault(name, entry)
            entry.setdefault("runs", {})[label] = found
            defaults = [r["test_accuracy"] for k, r in entry["runs"].items() if k.startswith("defaults-")]
            if defaults:
                entry["defaults_mean"] = round(statistics.mean(defaults), 4)
                entry["defaults_std"] = round(statistics.stdev(defaults), 4) if len(defaults) > 1 else 0.0
            write(results)


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "complementary.json", json.dumps(results, indent=2))
    lines = ["# Complementary modalities", "", f"Machine: {results['machine']}", ""]
    for name in ("questions", "spoken"):
        if name not in results:
            continue
        entry = results[name]
        single = entry["table"]["best_single_input_test_accuracy"]
        lines += [
            f"## {entry['table']['task']}",
            "",
            f"Bayes accuracy 1.0; best from one input alone: {single}; defaults mean "
            f"{entry.get('defaults_mean', '-')} ± {entry.get('defaults_std', '-')}",
            "",
            "| run | fusion | question encoder | modality dropout | aux heads | test accuracy | epochs | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, r in entry.get("runs", {}).items():
            lines.append(
                f"| {label} | {r['fusion']} | {r['text_encoder'].get('question', '-')} | "
                f"{r['modality_dropout']} | {r['aux_loss_weight']} | "
                f"{r['test_accuracy']} | {r['epochs_run']} | {r['whole_run_seconds']} |"
            )
        lines.append("")
    atomic_write_text(RESULTS / "complementary.md", "\n".join(lines))


if __name__ == "__main__":
    main()
