"""Classification (multi-class / binary), multi-label and regression losses, one per target."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from polyfuse.data.preprocess import TargetSpec
from polyfuse.models.model import ModelOutput


def target_loss(
    logits: Tensor, target: Tensor, spec: TargetSpec, class_weight: Tensor | None = None
) -> Tensor:
    """logits (B, C) with target (B,) long; (B, L) with (B, L) indicators; (B,) with (B,) standardised."""
    if spec.task == "classification":
        return F.cross_entropy(logits, target, weight=class_weight)
    if spec.task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=class_weight)
    return F.mse_loss(logits, target)


def present_rows_loss(
    logits: Tensor, target: Tensor, spec: TargetSpec, present: Tensor, class_weight: Tensor | None = None
) -> Tensor:
    """`target_loss` over the rows where `present` (B,) bool holds; 0 when none does (still in the graph, so
    the head's parameters get a zero gradient rather than none, as DDP requires)."""
    if spec.task == "classification":
        per_row = F.cross_entropy(logits, target, weight=class_weight, reduction="none")  # (B,) w[y]·CE
        row_weight = class_weight[target] if class_weight is not None else torch.ones_like(per_row)
    elif spec.task == "multilabel":
        elementwise = F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=class_weight, reduction="none"
        )
        per_row = elementwise.mean(-1)  # (B, L) → (B,)
        row_weight = torch.ones_like(per_row)
    else:
        per_row = (logits - target) ** 2  # (B,)
        row_weight = torch.ones_like(per_row)
    mask = present.to(per_row.dtype)
    return (per_row * mask).sum() / (row_weight * mask).sum().clamp(min=1e-12)


def supervised_losses(
    output: ModelOutput,
    targets: Mapping[str, Tensor],
    specs: Mapping[str, TargetSpec],
    *,
    class_weights: Mapping[str, Tensor | None] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    aux_weight: float = 0.0,
) -> dict[str, Tensor]:
    """{'<target>_loss': ..., 'aux_loss': ..., 'loss': weighted total}.

    Each input's auxiliary head is a model of its own: its loss (over the rows that have that input, targets
    weighted as in the main loss) enters the total with `aux_weight`, whatever the number of inputs, so
    adding a column does not dilute the others' training signal.
    """
    class_weights = class_weights or {}
    loss_weights = loss_weights or {}
    losses: dict[str, Tensor] = {}
    total = torch.zeros((), device=output.fused.device)
    for name, spec in specs.items():
        loss = target_loss(output.logits[name], targets[name], spec, class_weights.get(name))
        losses[f"{name}_loss"] = loss
        total = total + loss_weights.get(name, 1.0) * loss
    if aux_weight > 0 and output.aux_logits:
        aux = torch.zeros((), device=output.fused.device)
        for input_name, per_target in output.aux_logits.items():
            present = output.aux_present[input_name]
            for name, spec in specs.items():
                loss = present_rows_loss(
                    per_target[name], targets[name], spec, present, class_weights.get(name)
                )
                aux = aux + loss_weights.get(name, 1.0) * loss
        losses["aux_loss"] = aux
        total = total + aux_weight * aux
    losses["loss"] = total
    return losses


def balanced_class_weights(targets: Tensor, spec: TargetSpec) -> Tensor:
    """Inverse-frequency weights (mean 1) from training targets: (C,) for classes, (L,) pos_weight for
    multi-label (negatives / positives per label)."""
    if spec.task == "multilabel":
        positives = targets.sum(0).clamp(min=1.0)
        return (targets.shape[0] - positives) / positives
    counts = torch.bincount(targets, minlength=len(spec.classes)).float().clamp(min=1.0)
    weights = counts.sum() / (len(spec.classes) * counts)
    return weights / weights.mean()
