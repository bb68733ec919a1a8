"""The complementary tables: answers follow their rule, no column gives the answer away, splits are kept,
and the single-input accuracies stated beside each table are what the best single-input rule reaches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from polyfuse.data.datasets import build_digit_questions, build_spoken_vs_written
from polyfuse.data.datasets.complementary import WORDS


@pytest.fixture()
def av_table(tmp_path: Path) -> Path:
    """An AV-Digits-shaped table (only the CSV is read): 400 rows, digits 0-9, a fixed train/test split."""
    rows = [
        {
            "id": i,
            "image": f"images/{i:05d}.png",
            "audio": f"audio/{i % 10}_spk_{i}.wav",
            "label": i % 10,
            "speaker": "spk",
            "split": "test" if i % 4 == 0 else "train",
        }
        for i in range(400)
    ]
    path = tmp_path / "av_digits.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _shown(image: str) -> int:
    return int(re.search(r"(\d+)\.png", image).group(1)) % 10  # type: ignore[union-attr]


def _rule(question: str, shown: int) -> bool:
    """The answer computed independently from the question's words."""
    asked = next((WORDS.index(w) for w in WORDS if re.search(rf"\b{w}\b", question)), None)
    if "even number" in question:
        return (shown % 2 == 0) != ("not" in question)
    assert asked is not None
    if "larger" in question:
        return (shown > asked) != ("not" in question)
    if "smaller" in question:
        return shown < asked
    return (shown == asked) != ("not" in question)


def test_digit_questions_answers_follow_the_question_and_the_image(av_table: Path) -> None:
    path = build_digit_questions(av_table, questions_per_image=3, seed=1)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["id", "image", "question", "answer", "split"]  # no digit column leaks
    assert len(frame) == 1200
    for image, question, answer in zip(frame["image"], frame["question"], frame["answer"], strict=True):
        assert answer == ("yes" if _rule(question, _shown(image)) else "no"), (image, question)
    # an image keeps its AV-Digits split
    av = pd.read_csv(av_table).set_index("image")["split"]
    assert (frame["split"] == frame["image"].map(av)).all()
    assert 0.35 < (frame["answer"] == "yes").mean() < 0.65
    assert any("not" in q for q in frame["question"])

    meta = json.loads(path.with_suffix(".json").read_text())
    single = meta["best_single_input_test_accuracy"]
    assert meta["bayes_accuracy"] == 1.0
    assert single["image"] < 0.7 and single["question"] < 0.8  # neither input alone suffices
    # recompute the question-only rule by hand: majority answer per question text on train
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    majority = train.groupby("question")["answer"].agg(lambda a: a.mode().iloc[0])
    fallback = train["answer"].mode().iloc[0]
    predicted = test["question"].map(majority).fillna(fallback)
    assert single["question"] == pytest.approx(float((predicted == test["answer"]).mean()), abs=1e-4)


def test_spoken_vs_written_pairs_within_a_split(av_table: Path) -> None:
    path = build_spoken_vs_written(av_table, seed=0)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["id", "image", "audio", "answer", "split"]
    av = pd.read_csv(av_table)
    audio_split = av.set_index("audio")["split"]
    assert (frame["audio"].map(audio_split) == frame["split"]).all()  # a recording never crosses splits
    assert sorted(frame["audio"]) == sorted(av["audio"])  # each recording used once
    spoken = frame["audio"].str.extract(r"audio/(\d)_")[0].astype(int)
    written = frame["image"].map(_shown)
    assert ((spoken > written) == (frame["answer"] == "yes")).all()
    single = json.loads(path.with_suffix(".json").read_text())["best_single_input_test_accuracy"]
    assert set(single) == {"image", "audio"}
    assert all(0.6 < v < 0.9 for v in single.values())  # ~0.75 in expectation: one digit is not enough
