"""Per-class precision / recall / F1, the confusion matrix, and the most confidently wrong rows."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def per_class_metrics(predicted: Tensor, targets: Tensor, classes: list[str]) -> dict[str, Any]:
    """predicted, targets (N,) class ids → {"classes", "per_class": {class: {precision, recall, f1,
    support}}, "confusion_matrix" (rows = true class, columns = predicted)}. A class never predicted has
    precision 0 (and one never present recall 0), as scikit-learn's zero_division=0."""
    n = len(classes)
    scores = {
        "precision": multiclass_precision(predicted, targets, num_classes=n, average=None),
        "recall": multiclass_recall(predicted, targets, num_classes=n, average=None),
        "f1": multiclass_f1_score(predicted, targets, num_classes=n, average=None),
    }
    support = torch.bincount(targets, minlength=n)
    return {
        "classes": classes,
        "per_class": {
            name: {**{k: float(v[i]) for k, v in scores.items()}, "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": multiclass_confusion_matrix(predicted, targets, num_classes=n).tolist(),
    }


def confident_errors(probabilities: Tensor, targets: Tensor, k: int = 10) -> list[dict[str, Any]]:
    """The k wrong rows the model was surest of: [{"row", "predicted", "true", "confidence",
    "true_probability"}], by confidence, highest first (ties: lower row first). Ids, not names."""
    confidence, predicted = probabilities.max(-1)
    wrong = torch.nonzero(predicted != targets).flatten().tolist()
    wrong.sort(key=lambda r: (-float(confidence[r]), r))
    return [
        {
            "row": r,
            "predicted": int(predicted[r]),
            "true": int(targets[r]),
            "confidence": float(confidence[r]),
            "true_probability": float(probabilities[r, targets[r]]),
        }
        for r in wrong[:k]
    ]
