import numpy as np
import pandas as pd
import pytest

from polyfuse.data.errors import DataError
from polyfuse.data.splits import SplitConfig, assign_splits


def _frame(n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "label": rng.choice(["a", "b", "c"], size=n, p=[0.7, 0.2, 0.1]),
            "speaker": [f"s{i % 13}" for i in range(n)],
            "split": ["train"] * (n - 100) + ["test"] * 100,
        }
    )


def test_stratified_keeps_class_shares_in_every_split() -> None:
    frame = _frame()
    splits = assign_splits(frame, SplitConfig(strategy="stratified", seed=3), default_stratify="label")
    overall = frame["label"].value_counts(normalize=True)
    for name, share in [("train", 0.8), ("val", 0.1), ("test", 0.1)]:
        part = frame[splits == name]
        assert abs(len(part) / len(frame) - share) < 0.01
        shares = part["label"].value_counts(normalize=True)
        assert np.allclose(shares[overall.index], overall, atol=0.02)


def test_seeded_and_seed_sensitive() -> None:
    frame = _frame()
    a = assign_splits(frame, SplitConfig(strategy="random", seed=1))
    b = assign_splits(frame, SplitConfig(strategy="random", seed=1))
    c = assign_splits(frame, SplitConfig(strategy="random", seed=2))
    assert a.equals(b) and not a.equals(c)


def test_group_split_never_crosses_groups() -> None:
    frame = _frame()
    splits = assign_splits(frame, SplitConfig(strategy="group", group="speaker", seed=0))
    per_group = pd.DataFrame({"g": frame["speaker"], "s": splits}).groupby("g")["s"].nunique()
    assert (per_group == 1).all()
    assert set(splits) == {"train", "val", "test"}
    assert 0.6 < (splits == "train").mean() < 0.95


def test_column_split_carves_validation_out_of_train_only() -> None:
    frame = _frame()
    splits = assign_splits(frame, SplitConfig(strategy="column", val_fraction_of_train=0.1), "label")
    assert (splits[frame["split"] == "test"] == "test").all()
    assert 88 <= (splits == "val").sum() <= 92  # 10% of 900 train rows, rounded per class
    assert set(splits[frame["split"] == "train"]) == {"train", "val"}


def test_bad_split_values_are_reported_by_row() -> None:
    frame = pd.DataFrame({"split": ["train", "tset", "test", None]})
    with pytest.raises(DataError) as info:
        assign_splits(frame, SplitConfig(strategy="column"))
    text = str(info.value)
    assert "row 1" in text and "'tset'" in text and "row 3" in text


def test_fractions_validated() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(fractions=(0.5, 0.1, 0.1))
