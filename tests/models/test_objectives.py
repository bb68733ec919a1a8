"""Supervised losses: the auxiliary heads' loss counts only rows that have the input, per input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from polyfuse.data.preprocess import TargetSpec
from polyfuse.objectives.supervised import present_rows_loss, supervised_losses, target_loss

CLASSES = TargetSpec(column="label", task="classification", classes=["a", "b", "c"])
LABELS = TargetSpec(column="tags", task="multilabel", classes=["x", "y"])
VALUE = TargetSpec(column="price", task="regression")


def _example(spec: TargetSpec, rows: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if spec.task == "classification":
        return torch.randn(rows, 3, generator=generator), torch.tensor([0, 1, 2, 2, 1, 0])
    if spec.task == "multilabel":
        indicators = torch.randint(0, 2, (rows, 2), generator=generator).float()
        return torch.randn(rows, 2, generator=generator), indicators
    return torch.randn(rows, generator=generator), torch.randn(rows, generator=generator)


@pytest.mark.parametrize(
    ("spec", "weighted"),
    [(CLASSES, False), (CLASSES, True), (LABELS, False), (LABELS, True), (VALUE, False)],
    ids=["classes", "weighted-classes", "labels", "weighted-labels", "regression"],
)
def test_present_rows_loss_is_the_loss_of_the_present_rows(spec: TargetSpec, weighted: bool) -> None:
    logits, target = _example(spec)
    weight = torch.tensor([0.5, 2.0, 1.0]) if spec.task == "classification" else torch.tensor([3.0, 0.5])
    class_weight = weight if weighted else None
    present = torch.tensor([True, False, True, True, False, True])

    expected = target_loss(logits[present], target[present], spec, class_weight)
    got = present_rows_loss(logits, target, spec, present, class_weight)

    torch.testing.assert_close(got, expected)
    assert got != target_loss(logits, target, spec, class_weight)  # the absent rows would have changed it


def test_no_present_row_gives_zero_loss_and_a_zero_gradient() -> None:
    logits, target = _example(CLASSES)
    logits.requires_grad_(True)
    loss = present_rows_loss(logits, target, CLASSES, torch.zeros(6, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def _output(aux_logits: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, Any]:
    """supervised_losses' model outputs: fused-head logits and per-input auxiliary logits."""
    fused_logits, _ = _example(CLASSES)
    return {
        "logits": {"label": fused_logits},
        "aux_logits": {name: {"label": logits} for name, logits in aux_logits.items()},
        "aux_present": present,
    }


def test_each_input_head_enters_with_the_full_aux_weight() -> None:
    logits, target = _example(CLASSES)
    everywhere = torch.ones(6, dtype=torch.bool)
    one = supervised_losses(
        targets={"label": target},
        specs={"label": CLASSES},
        aux_weight=0.5,
        **_output({"image": logits}, {"image": everywhere}),
    )
    two = supervised_losses(
        targets={"label": target},
        specs={"label": CLASSES},
        aux_weight=0.5,
        **_output({"image": logits, "audio": logits}, {"image": everywhere, "audio": everywhere}),
    )
    head_loss = target_loss(logits, target, CLASSES)
    torch.testing.assert_close(one["aux_loss"], head_loss)
    torch.testing.assert_close(two["aux_loss"], 2 * head_loss)  # a second input adds, it does not dilute
    torch.testing.assert_close(two["loss"], two["label_loss"] + 0.5 * 2 * head_loss)


def test_an_absent_input_does_not_train_its_aux_head_on_the_padding() -> None:
    logits, target = _example(CLASSES)
    present = torch.tensor([True, True, True, False, False, True])
    garbage = logits.clone()
    garbage[~present] = torch.tensor([100.0, -100.0, 0.0])  # whatever the head says where there is no input
    specs, targets = {"label": CLASSES}, {"label": target}

    clean = supervised_losses(
        targets=targets, specs=specs, aux_weight=1.0, **_output({"audio": logits}, {"audio": present})
    )
    noisy = supervised_losses(
        targets=targets, specs=specs, aux_weight=1.0, **_output({"audio": garbage}, {"audio": present})
    )

    torch.testing.assert_close(clean["aux_loss"], noisy["aux_loss"])
    torch.testing.assert_close(clean["aux_loss"], target_loss(logits[present], target[present], CLASSES))
