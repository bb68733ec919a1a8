"""Tables whose label needs both inputs together (complementary modalities), built from an AV-Digits table.

AV-Digits is redundant: the image alone and the audio alone each name the digit. These two are not:

- digit questions (`build_digit_questions`): an MNIST image and a question about it, with negations and
  comparisons ("is this not a seven?", "is it larger than three?"); the answer is yes / no. The question
  alone or the image alone answers only part of the rows; both together answer every row.
- spoken vs written (`build_spoken_vs_written`): an image of one digit and a recording of another; "is the
  spoken digit larger than the written one?".

Both are written beside the AV-Digits table (their media paths are the same relative paths), keep its
splits (an image or recording is only ever paired within its own split), and carry no column that gives
the answer away. A JSON file beside each states its Bayes accuracy (1.0: the answer is a function of the
two digits and the question) and the best accuracy from each input alone, measured by the best possible
single-input rule: the majority answer per question text (question alone) or per true digit (the image or
the recording alone, assuming it is recognised perfectly), fitted on the training rows, scored on test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polyfuse.atomic import atomic_write_text

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTIONS_NAME = "digit_questions.csv"
SPOKEN_NAME = "spoken_vs_written.csv"

# kind -> (question template, answer(digit shown, digit asked)); "{}" is the digit asked, in words
QUESTION_KINDS: dict[str, tuple[str, Callable[[int, int], bool]]] = {
    "is": ("is this a {}?", lambda shown, asked: shown == asked),
    "is_not": ("is this not a {}?", lambda shown, asked: shown != asked),
    "larger": ("is it larger than {}?", lambda shown, asked: shown > asked),
    "not_larger": ("is it not larger than {}?", lambda shown, asked: shown <= asked),
    "smaller": ("is it smaller than {}?", lambda shown, asked: shown < asked),
    "even": ("is it an even number?", lambda shown, asked: shown % 2 == 0),
    "not_even": ("is it not an even number?", lambda shown, asked: shown % 2 == 1),
}


def _answer(flag: bool) -> str:
    return "yes" if flag else "no"


def build_digit_questions(av_table: Path, *, questions_per_image: int = 2, seed: int = 0) -> Path:
    """Write `digit_questions.csv` (id, image, question, answer, split) beside `av_table`; returns its path.

    Each AV-Digits image gets `questions_per_image` questions of kinds drawn uniformly. For "is" / "is not"
    the digit asked is the one shown half of the time (so those answers are balanced); for comparisons it
    is uniform over 0–9.
    """
    av = pd.read_csv(av_table)
    rng = np.random.default_rng(seed)
    kinds = list(QUESTION_KINDS)
    rows: list[dict[str, Any]] = []
    truth: list[int] = []
    for image, shown, split in zip(av["image"], av["label"].astype(int), av["split"], strict=True):
        for _ in range(questions_per_image):
            kind = kinds[int(rng.integers(len(kinds)))]
            asked = int(rng.integers(10))
            if kind in ("is", "is_not") and rng.random() < 0.5:
                asked = shown
            template, rule = QUESTION_KINDS[kind]
            question = template.format(WORDS[asked])
            rows.append({"image": image, "question": question, "answer": _answer(rule(shown, asked))})
            rows[-1]["split"] = split
            truth.append(shown)
    frame = pd.DataFrame(rows)
    frame.insert(0, "id", range(len(frame)))
    single = {
        "question": _best_single_input(frame, frame["question"]),
        "image": _best_single_input(frame, pd.Series(truth)),
    }
    return _write(av_table.parent / QUESTIONS_NAME, frame, single, "a question about an MNIST image")


def build_spoken_vs_written(av_table: Path, *, seed: int = 0) -> Path:
    """Write `spoken_vs_written.csv` (id, image, audio, answer, split) beside `av_table`; returns its path.

    Every AV-Digits image is paired with a recording drawn from another row of the same split (so the two
    digits are independent); the answer is whether the spoken digit is larger than the written one.
    """
    av = pd.read_csv(av_table)
    rng = np.random.default_rng(seed)
    partner = np.arange(len(av))
    for split in av["split"].unique():
        rows = np.flatnonzero((av["split"] == split).to_numpy())
        partner[rows] = rng.permutation(rows)
    written, spoken = av["label"].astype(int).to_numpy(), av["label"].astype(int).to_numpy()[partner]
    frame = pd.DataFrame(
        {
            "id": range(len(av)),
            "image": av["image"],
            "audio": av["audio"].to_numpy()[partner],
            "answer": [_answer(s > w) for s, w in zip(spoken, written, strict=True)],
            "split": av["split"],
        }
    )
    single = {
        "image": _best_single_input(frame, pd.Series(written)),
        "audio": _best_single_input(frame, pd.Series(spoken)),
    }
    return _write(
        av_table.parent / SPOKEN_NAME, frame, single, "is the spoken digit larger than the written one"
    )


def _best_single_input(frame: pd.DataFrame, key: pd.Series) -> float:
    """Test accuracy of the majority answer per value of `key` (one input's content), fitted on train;
    a value never seen in training gets the overall training majority."""
    train = frame["split"] == "train"
    test = frame["split"] == "test"
    answers = frame["answer"]
    overall = answers[train].mode().iloc[0]
    majority = answers[train].groupby(key[train].to_numpy()).agg(lambda a: a.mode().iloc[0])
    predicted = key[test].map(majority).fillna(overall)
    return round(float((predicted.to_numpy() == answers[test].to_numpy()).mean()), 4)


def _write(path: Path, frame: pd.DataFrame, single: dict[str, float], task: str) -> Path:
    test = frame[frame["split"] == "test"]
    meta = {
        "task": task,
        "rows": {s: int((frame["split"] == s).sum()) for s in ("train", "val", "test")},
        "bayes_accuracy": 1.0,
        "best_single_input_test_accuracy": single,
        "majority_test_accuracy": round(float((test["answer"] == test["answer"].mode().iloc[0]).mean()), 4),
    }
    atomic_write_text(path, frame.to_csv(index=False))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path
