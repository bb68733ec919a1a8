"""Target encoding: class ids, multi-label indicators, standardised regression values, and clear refusals."""

from __future__ import annotations

import pytest
import torch

from polyfuse.data.errors import MediaError
from polyfuse.data.preprocess import MULTILABEL_SEPARATOR, TargetSpec, encode_target


def test_class_label_becomes_its_id() -> None:
    spec = TargetSpec(column="label", task="classification", classes=["cat", "dog", "eel"])
    assert encode_target("dog", spec).item() == 1
    assert encode_target("dog", spec).dtype == torch.long


def test_multilabel_accepts_a_separated_string_a_list_and_an_empty_list() -> None:
    spec = TargetSpec(column="tags", task="multilabel", classes=["a", "b", "c"])
    assert encode_target(["a", "c"], spec).tolist() == [1.0, 0.0, 1.0]
    # an empty list is a row with no labels, not a missing value
    assert encode_target([], spec).tolist() == [0.0, 0.0, 0.0]
    assert encode_target(MULTILABEL_SEPARATOR.join(["c", "b"]), spec).tolist() == [0.0, 1.0, 1.0]


def test_regression_value_is_standardised() -> None:
    spec = TargetSpec(column="price", task="regression", mean=10.0, std=4.0)
    assert encode_target("18", spec).item() == pytest.approx(2.0)


@pytest.mark.parametrize("missing", [None, float("nan"), ""])
def test_missing_label_is_refused_with_a_fix(missing: object) -> None:
    spec = TargetSpec(column="label", task="classification", classes=["cat", "dog"])
    with pytest.raises(MediaError, match="label is missing") as info:
        encode_target(missing, spec)
    assert "--drop-invalid" in str(info.value.fix)


def test_unseen_label_is_refused_naming_it_and_the_known_ones() -> None:
    spec = TargetSpec(column="label", task="classification", classes=["cat", "dog"])
    with pytest.raises(MediaError, match="label 'zebra' was not seen in training") as info:
        encode_target("zebra", spec)
    assert "cat" in str(info.value.fix)
    multilabel = TargetSpec(column="tags", task="multilabel", classes=["a"])
    with pytest.raises(MediaError, match="label 'z'"):
        encode_target(["a", "z"], multilabel)
    assert encode_target(["a"], multilabel).tolist() == [1.0]
