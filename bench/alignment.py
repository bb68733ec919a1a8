"""Alignment on AV-Digits: cross-modal retrieval, consistency, zero-shot and label efficiency.

    .venv/bin/python bench/alignment.py                       # every stage
    .venv/bin/python bench/alignment.py --stages clean labels # some of them

Stages (each run is a real `polyfuse init` + `polyfuse train` in a child process, with init's defaults
unless said):
  clean     `init --objective contrastive`: audio→image and image→audio class-level recall@1 on the test
            split.
  matching  `init --objective contrastive --objective matching`: consistency ROC-AUC on true test rows
            against the same rows with the image (or, every other row, the audio) swapped for one of
            another label; its recall@1 too.
  speakers  the contrastive model on each speaker-held-out split; the mean over the six speakers.
  zeroshot  a caption column ("the digit seven") from the label, frozen MiniLM as its encoder, image and
            audio bound to it (anchor: caption; no label column); zero-shot accuracy on test images and
            test audio from class-name prompts alone: the training caption's template, and the default
            templates that never occur in the table.
  labels    contrastive pretraining on every training row without labels, then `--init-from` and a
            supervised fine-tune on 5 % of the training labels, against the same model from scratch on the
            same 5 %; 3 seeds (the 5 % and the fine-tune seed change; one pretraining). Fine-tunes of the
            pretrained model: every weight at once, linear probe then fine-tune (encoders held for half the
            epochs, then at a tenth of the learning rate), and encoders frozen throughout. All get the same
            budget: `--finetune-epochs` (100) without early stopping — on 121 training rows an epoch is two
            steps, and init's patience of 5 on a 14-row validation split stops the scratch model at chance.
Results: bench/results/alignment.json and .md (rewritten after every stage).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from polyfuse.atomic import atomic_write_text
from polyfuse.config import TrainingConfig
from polyfuse.data.datasets import build_av_digits, default_data_dir

RESULTS = Path(__file__).parent / "results"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLI = [sys.executable, "-m", "polyfuse.cli"]


def polyfuse(*args: str, log: Path) -> float:
    """Run a polyfuse command; returns its wall seconds; raises with the log's tail on failure."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([*CLI, *args], stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"polyfuse {' '.join(args)} failed; {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def init_and_train(
    table: Path,
    work: Path,
    name: str,
    init_args: list[str],
    edit: Any = None,
    train_args: tuple[str, ...] = (),
) -> tuple[Path, dict[str, Any], float]:
    """`polyfuse init` (then `edit(config dict)`), `polyfuse train`; returns run dir, test metrics, seconds."""
    config = work / f"{name}.yaml"
    polyfuse("init", str(table), *init_args, "-o", str(config), "--force", log=work / f"{name}-init.log")
    if edit is not None:
        raw = yaml.safe_load(config.read_text())
        edit(raw)
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = work / name
    seconds = polyfuse("train", str(config), "-o", str(run), *train_args, log=work / f"{name}.log")
    return run, json.loads((run / "metrics.json").read_text())["test"], seconds


def av_digits(work: Path, data: Path) -> Path:
    """The AV-Digits table in work/av, built once: later stages (and re-runs) reuse it, and it is where the
    labels stage writes its 5 % tables (their media paths are relative to it)."""
    table = work / "av" / "av_digits.csv"
    return table if table.is_file() else build_av_digits(work / "av", data)


def retrieval(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("recall@1", "recall@5", "recall@10", "median_rank", "mAP")
    return {
        direction: {k: round(metrics[f"retrieval_{direction}"][k], 4) for k in keys}
        for direction in ("audio_to_image", "image_to_audio")
    }


def stage_clean(data: Path, work: Path) -> dict[str, Any]:
    table = av_digits(work, data)
    _, test, seconds = init_and_train(table, work, "contrastive", ["--objective", "contrastive"])
    return {"contrastive": {**retrieval(test), "whole_train_seconds": round(seconds, 1)}}


def stage_matching(data: Path, work: Path) -> dict[str, Any]:
    table = av_digits(work, data)
    _, test, seconds = init_and_train(
        table, work, "contrastive-matching", ["--objective", "contrastive", "--objective", "matching"]
    )
    return {
        "contrastive_matching": {
            **retrieval(test),
            "consistency": {k: round(v, 4) for k, v in test["consistency"].items()},
            "whole_train_seconds": round(seconds, 1),
        }
    }


def stage_speakers(data: Path, work: Path) -> dict[str, Any]:
    per_speaker = {}
    for speaker in SPEAKERS:
        table = build_av_digits(work / f"av-{speaker}", data, holdout_speaker=speaker)
        _, test, _ = init_and_train(table, work, f"contrastive-{speaker}", ["--objective", "contrastive"])
        per_speaker[speaker] = retrieval(test)
    mean = {
        direction: {
            k: round(statistics.mean(s[direction][k] for s in per_speaker.values()), 4)
            for k in ("recall@1", "recall@5", "mAP")
        }
        for direction in ("audio_to_image", "image_to_audio")
    }
    return {"per_speaker": per_speaker, "mean_over_speakers": mean}


def stage_zeroshot(data: Path, work: Path) -> dict[str, Any]:
    import polyfuse as pf

    table = build_av_digits(work / "av-captions", data)  # its own folder: the captions file stays beside it
    frame = pd.read_csv(table)
    frame["caption"] = [f"the digit {WORDS[int(v)]}" for v in frame["label"]]
    captioned = table.parent / "av_digits_captions.csv"
    frame.to_csv(captioned, index=False)

    def unlabeled_anchor(raw: dict[str, Any]) -> None:
        raw["data"]["targets"] = {}
        raw["data"]["columns"]["label"] = "ignore"
        raw["objectives"] = [{"name": "contrastive", "weight": 1.0, "options": {"anchor": "caption"}}]

    run, _test, seconds = init_and_train(
        captioned, work, "zeroshot", ["--objective", "contrastive", "-c", "caption=text"], unlabeled_anchor
    )
    predictor = pf.load(run / "model")
    rows = frame[frame["split"] == "test"]
    truth = [WORDS[int(v)] for v in rows["label"]]
    out: dict[str, Any] = {"whole_train_seconds": round(seconds, 1), "test_rows": len(rows)}
    for modality in ("image", "audio"):
        inputs = rows[[modality]].to_dict("records")
        for name, templates in (("caption_template", ("the digit {}",)), ("default_templates", None)):
            kwargs = {"templates": templates} if templates else {}
            predicted = predictor.zero_shot(
                inputs, list(WORDS), modality=modality, base_dir=table.parent, **kwargs
            )["label"]
            accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
            out[f"{modality}_{name}_accuracy"] = round(accuracy, 4)
    return out


# name -> (starts from the pretrained model?, training options given init's training section). Copied
# encoders count as pretrained, so encoder_learning_rate and unfreeze_after_epochs apply to them.
FINETUNES: dict[str, tuple[bool, Any]] = {
    "scratch": (False, lambda training: {}),
    "pretrained": (True, lambda training: {}),  # every weight at the head's learning rate from the start
    # linear probe, then fine-tune (LP-FT, Kumar et al. 2022): fusion and head fit the pretrained
    # features for half the budget, then the encoders follow at a tenth of the learning rate
    "pretrained_probe_then_tune": (
        True,
        lambda training: {
            "unfreeze_after_epochs": training["epochs"] // 2,
            "encoder_learning_rate": training["learning_rate"] / 10,
        },
    ),
    "pretrained_frozen": (True, lambda training: {"unfreeze_after_epochs": training["epochs"]}),  # never
}


def stage_labels(data: Path, work: Path, seeds: list[int], share: float, epochs: int) -> dict[str, Any]:
    table = av_digits(work, data)

    def unlabeled(raw: dict[str, Any]) -> None:
        raw["data"]["targets"] = {}
        raw["data"]["columns"]["label"] = "ignore"
        raw["data"]["split"]["val_fraction_of_train"] = 0.1
        raw["objectives"] = [{"name": "contrastive", "weight": 1.0, "options": {}}]

    pretrain = work / "pretrain"
    if (pretrain / "model" / "polyfuse.json").is_file():  # one pretraining serves every re-run
        pretrain_seconds: float | None = None
    else:
        pretrain, _, pretrain_seconds = init_and_train(
            table, work, "pretrain", ["--objective", "contrastive"], unlabeled
        )
    frame = pd.read_csv(table)
    runs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        train = frame.index[frame["split"] == "train"].to_numpy()
        kept = rng.choice(train, round(share * len(train)), replace=False)
        few = frame[(frame["split"] != "train") | frame.index.isin(kept)]
        few_table = table.parent / f"av_digits_{int(share * 100)}pct_seed{seed}.csv"
        few.to_csv(few_table, index=False)

        result: dict[str, Any] = {"seed": seed, "labelled_train_rows": len(kept)}
        for name, (extra, options) in FINETUNES.items():

            def seeded(raw: dict[str, Any], seed: int = seed, options: Any = options) -> None:
                raw["training"].update(seed=seed, epochs=epochs, early_stopping_patience=None)
                raw["training"].update(options(raw["training"]))

            _, test, _ = init_and_train(
                few_table,
                work,
                f"{name}-seed{seed}",
                ["-t", "label"],
                seeded,
                train_args=("--init-from", str(pretrain)) if extra else (),
            )
            result[f"{name}_accuracy"] = round(test["label"]["accuracy"], 4)
        runs.append(result)
    summary = {
        name: {
            "mean": round(statistics.mean(r[f"{name}_accuracy"] for r in runs), 4),
            "std": round(statistics.stdev(r[f"{name}_accuracy"] for r in runs), 4) if len(runs) > 1 else 0.0,
        }
        for name in FINETUNES
    }
    return {
        "label_share": share,
        "finetune_epochs": epochs,
        "finetunes": {  # with init's learning rate
            name: options({"epochs": epochs, "learning_rate": TrainingConfig().learning_rate})
            for name, (_, options) in FINETUNES.items()
        },
        "pretrain_seconds": "reused" if pretrain_seconds is None else round(pretrain_seconds, 1),
        "runs": runs,
        "summary": summary,
    }


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "alignment.json", json.dumps(results, indent=2))
    lines = ["# Alignment on AV-Digits", "", f"Machine: {results['machine']}", ""]
    for name, values in {**results.get("clean", {}), **results.get("matching", {})}.items():
        a2i, i2a = values["audio_to_image"], values["image_to_audio"]
        lines.append(
            f"- {name}: audio→image R@1 {a2i['recall@1']}, mAP {a2i['mAP']}; image→audio R@1 "
            f"{i2a['recall@1']}, mAP {i2a['mAP']}; train {values['whole_train_seconds']} s"
        )
        if "consistency" in values:
            lines.append(f"  - consistency ROC-AUC {values['consistency'].get('roc_auc')}")
    if "speakers" in results:
        mean = results["speakers"]["mean_over_speakers"]
        lines.append(
            f"- speaker-held-out (mean of 6): audio→image R@1 {mean['audio_to_image']['recall@1']}, "
            f"image→audio R@1 {mean['image_to_audio']['recall@1']}"
        )
    if "zeroshot" in results:
        lines.append(f"- zero-shot: {json.dumps(results['zeroshot'])}")
    if "labels" in results:
        lines.append(f"- label efficiency: {json.dumps(results['labels']['summary'])}")
    atomic_write_text(RESULTS / "alignment.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stages", nargs="+", default=["clean", "matching", "zeroshot", "labels", "speakers"]
    )
    parser.add_argument("--data", type=Path, default=None, help="folder with mnist/ and fsdd/")
    parser.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temp folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label-share", type=float, default=0.05)
    parser.add_argument("--finetune-epochs", type=int, default=100)
    args = parser.parse_args()
    data = args.data or default_data_dir()
    work = args.work or Path(tempfile.mkdtemp(prefix="polyfuse-alignment-"))
    work.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "alignment.json"
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    stages = {
        "clean": lambda: stage_clean(data, work),
        "matching": lambda: stage_matching(data, work),
        "speakers": lambda: stage_speakers(data, work),
        "zeroshot": lambda: stage_zeroshot(data, work),
        "labels": lambda: stage_labels(data, work, args.seeds, args.label_share, args.finetune_epochs),
    }
    for stage in args.stages:
        if stage not in stages:
            raise SystemExit(f"unknown stage {stage}; stages: {list(stages)}")
    for stage in args.stages:
        print(f"stage {stage} ...", flush=True)
        figures = stages[stage]()
        # re-read before writing: stages may run as separate processes side by side
        results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        results.update({"machine": machine, stage: figures})
        write(results)
        print(json.dumps(figures, indent=2), flush=True)


if __name__ == "__main__":
    main()
