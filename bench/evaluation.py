"""Evaluation on real data: contributions, robustness, calibration and cross-validation on AV-Digits.

    .venv/bin/python bench/evaluation.py                          # every stage
    .venv/bin/python bench/evaluation.py --stages planted --epochs 6

Every model is a real `polyfuse init -t label --preset av-digits` + `polyfuse train` in a child process, and
every figure comes from the user's commands (`polyfuse report`, `polyfuse calibrate`, `polyfuse cv`):
  noisy     AV-Digits-N: `polyfuse report` on the test split (each input's contribution, robustness
            curves), then `polyfuse calibrate` (temperature fitted on validation; ECE on test before/after)
  planted   AV-Digits with the audio column shuffled across rows within each split, so only the image
            carries the label: `polyfuse report --no-robustness`; the image should get (almost) all the
            contribution and the audio none
  cv        `polyfuse cv --folds 5` on AV-Digits: test accuracy mean ± std over the folds
Results: bench/results/evaluation.json and .md, rewritten after every stage.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from alignment import init_and_train, polyfuse  # child-process runners shared by the benches

from polyfuse.atomic import atomic_write_text
from polyfuse.data.datasets import build_av_digits, default_data_dir

RESULTS = Path(__file__).parent / "results"
INIT = ["-t", "label", "--preset", "av-digits"]


def with_epochs(epochs: int | None) -> Any:
    def edit(raw: dict[str, Any]) -> None:
        if epochs is not None:
            raw["training"]["epochs"] = epochs

    return edit


def table_for(work: Path, data: Path, variant: str) -> Path:
    folder = work / ("avn" if variant == "noisy" else "av")
    table = folder / "av_digits.csv"
    return table if table.is_file() else build_av_digits(folder, data, variant=variant)  # type: ignore[arg-type]


def report(model: Path, table: Path, out: Path, *extra: str) -> dict[str, Any]:
    polyfuse("report", str(model), str(table), "-o", str(out), *extra, log=out.with_suffix(".log"))
    return json.loads(out.with_suffix(".json").read_text())  # type: ignore[no-any-return]


def contributions(found: dict[str, Any]) -> dict[str, Any]:
    keys = ("removed", "drop_removed", "drop_permuted", "shapley_share")
    return {
        "full": round(found["contribution"]["full"], 4),
        "metric": found["contribution"]["metric"],
        "inputs": {
            name: {k: round(v[k], 4) for k in keys if v.get(k) is not None}
            for name, v in found["contribution"]["inputs"].items()
        },
    }


def stage_noisy(work: Path, data: Path, epochs: int | None) -> dict[str, Any]:
    table = table_for(work, data, "noisy")
    run, test, seconds = init_and_train(table, work, "noisy", INIT, with_epochs(epochs))
    found = report(run / "model", table, work / "noisy-report.html")
    robustness = found["robustness"]
    polyfuse("calibrate", str(run / "model"), str(table), log=work / "noisy-calibrate.log")
    calibration = json.loads((run / "model" / "calibration.json").read_text())["targets"]["label"]
    return {
        "table": "AV-Digits-N",
        "train_seconds": round(seconds, 1),
        "test_accuracy": round(test["label"]["accuracy"], 4),
        "contribution": contributions(found),
        "robustness": {
            "metric": robustness["metric"],
            "severities": robustness["severities"],
            "clean": round(robustness["clean"], 4),
            "curves": {
                name: {
                    family: {"values": [round(v, 4) for v in curve["values"]], "auc": round(curve["auc"], 4)}
                    for family, curve in families.items()
                }
                for name, families in robustness["curves"].items()
            },
        },
        "calibration": {
            "temperature": round(calibration["temperature"], 4),
            "test_rows": calibration["test"]["rows"],
            "test_ece_before": round(calibration["test"]["ece_before"], 5),
            "test_ece_after": round(calibration["test"]["ece_after"], 5),
            "test_nll_before": round(calibration["test"]["nll_before"], 5),
            "test_nll_after": round(calibration["test"]["nll_after"], 5),
        },
    }


def shuffled_audio(work: Path, data: Path) -> Path:
    """AV-Digits with each split's audio paths permuted across its rows: the audio no longer says the
    row's digit (beyond chance), so only the image carries the label."""
    source = table_for(work, data, "clean")
    frame = pd.read_csv(source)
    rng = np.random.default_rng(0)
    for _, rows in frame.groupby("split").groups.items():
        frame.loc[rows, "audio"] = rng.permutation(frame.loc[rows, "audio"].to_numpy())
    planted = source.with_name("av_digits_audio_shuffled.csv")
    frame.to_csv(planted, index=False)
    return planted


def stage_planted(work: Path, data: Path, epochs: int | None) -> dict[str, Any]:
    table = shuffled_audio(work, data)
    run, test, seconds = init_and_train(table, work, "planted", INIT, with_epochs(epochs))
    found = report(run / "model", table, work / "planted-report.html", "--no-robustness")
    return {
        "table": "AV-Digits, audio shuffled across rows within each split",
        "train_seconds": round(seconds, 1),
        "test_accuracy": round(test["label"]["accuracy"], 4),
        "contribution": contributions(found),
    }


def stage_cv(work: Path, data: Path, epochs: int | None) -> dict[str, Any]:
    table = table_for(work, data, "clean")
    config = work / "cv.yaml"
    polyfuse("init", str(table), *INIT, "-o", str(config), "--force", log=work / "cv-init.log")
    raw = yaml.safe_load(config.read_text())
    with_epochs(epochs)(raw)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    seconds = polyfuse("cv", str(config), "--folds", "5", "-o", str(work / "cv"), log=work / "cv.log")
    summary = json.loads((work / "cv" / "cv.json").read_text())
    return {"table": "AV-Digits", "folds": 5, "seconds": round(seconds, 1), "cv": summary}


STAGES = {"noisy": stage_noisy, "planted": stage_planted, "cv": stage_cv}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--epochs", type=int, default=None, help="default: init's")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="polyfuse-evaluation-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data or default_data_dir()
    path = RESULTS / "evaluation.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    for stage in args.stages:
        print(f"{stage} ...", flush=True)
        results[stage] = {"epochs": args.epochs or "init's", **STAGES[stage](work, data, args.epochs)}
        write(results)


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "evaluation.json", json.dumps(results, indent=2))
    lines = ["# Evaluation on AV-Digits", "", f"Machine: {results['machine']}", ""]
    for stage in ("noisy", "planted"):
        if stage not in results:
            continue
        entry = results[stage]
        contribution = entry["contribution"]
        lines += [
            f"## Contributions: {entry['table']} (test accuracy {entry['test_accuracy']})",
            "",
            f"| input | {contribution['metric']} without it | drop when removed | drop when permuted "
            "| Shapley share |",
            "|---|---|---|---|---|",
        ]
        for name, v in contribution["inputs"].items():
            lines.append(
                f"| {name} | {v.get('removed', '-')} | {v.get('drop_removed', '-')} | "
                f"{v.get('drop_permuted', '-')} | {v.get('shapley_share', '-')} |"
            )
        lines.append("")
    if "noisy" in results:
        robustness = results["noisy"]["robustness"]
        lines += [
            f"## Robustness curves on AV-Digits-N ({robustness['metric']}; clean {robustness['clean']})",
            "",
            "| input | corruption | " + " | ".join(str(s) for s in robustness["severities"]) + " | area |",
            "|---|---|" + "---|" * (len(robustness["severities"]) + 1),
        ]
        for name, families in robustness["curves"].items():
            for family, curve in families.items():
                values = " | ".join(str(v) for v in curve["values"])
                lines.append(f"| {name} | {family} | {values} | {curve['auc']} |")
        c = results["noisy"]["calibration"]
        lines += [
            "",
            f"## Calibration on AV-Digits-N test ({c['test_rows']} rows; temperature {c['temperature']})",
            "",
            f"ECE {c['test_ece_before']} before, {c['test_ece_after']} after; "
            f"NLL {c['test_nll_before']} before, {c['test_nll_after']} after",
            "",
        ]
    if "cv" in results:
        accuracy = results["cv"]["cv"]["metrics"]["label"]["accuracy"]
        folds = ", ".join(f"{v:.4f}" for v in accuracy["folds"])
        lines += [
            "## 5-fold cross-validation on AV-Digits",
            "",
            f"test accuracy {accuracy['mean']:.4f} ± {accuracy['std']:.4f} (folds: {folds}); "
            f"{results['cv']['seconds']} s for the five",
        ]
    atomic_write_text(RESULTS / "evaluation.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
