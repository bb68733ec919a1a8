"""Metrics per target through torchmetrics: classification, multi-label and regression."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional import (
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multilabel_accuracy,
    multilabel_exact_match,
    multilabel_f1_score,
)

from polyfuse.data.preprocess import TargetSpec


def target_metrics(outputs: Tensor, targets: Tensor, spec: TargetSpec) -> dict[str, Any]:
    """outputs: logits (N, C) / (N, L), or standardised regression values (N,); targets as encoded.

    Classification gives accuracy, macro precision / recall / F1 and the confusion matrix (rows = true
    class, columns = predicted, in `classes` order); regression gives MAE, RMSE and R² in the target's
    own units.
    """
    if len(targets) == 0:
        return {"rows": 0}
    if spec.task == "regression":
        predicted = outputs.float() * spec.std + spec.mean
        actual = targets.float() * spec.std + spec.mean
        return {
            "rows": len(targets),
            "mae": float(mean_absolute_error(predicted, actual)),
            "rmse": float(mean_squared_error(predicted, actual, squared=False)),
            "r2": float(r2_score(predicted, actual)) if len(targets) > 1 else float("nan"),
        }
    n = len(spec.classes)
    if spec.task == "multilabel":
        probs = torch.sigmoid(outputs.float())
        labels = targets.long()
        return {
            "rows": len(targets),
            "subset_accuracy": float(multilabel_exact_match(probs, labels, num_labels=n)),
            "label_accuracy": float(multilabel_accuracy(probs, labels, num_labels=n, average="micro")),
            "macro_f1": float(multilabel_f1_score(probs, labels, num_labels=n, average="macro")),
            "micro_f1": float(multilabel_f1_score(probs, labels, num_labels=n, average="micro")),
        }
    predicted = outputs.argmax(-1)
    return {
        "rows": len(targets),
        "accuracy": float(multiclass_accuracy(predicted, targets, num_classes=n, average="micro")),
        "macro_precision": float(multiclass_precision(predicted, targets, num_classes=n, average="macro")),
        "macro_recall": float(multiclass_recall(predicted, targets, num_classes=n, average="macro")),
        "macro_f1": float(multiclass_f1_score(predicted, targets, num_classes=n, average="macro")),
        "classes": spec.classes,
        "confusion_matrix": multiclass_confusion_matrix(predicted, targets, num_classes=n).tolist(),
    }
