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


def supervised_losses(
    output: ModelOutput,
    targets: Mapping[str, Tensor],
    specs: Mapping[str, TargetSpec],
    *,
    class_weights: Mapping[str, Tensor | None] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    aux_weight: float = 0.0,
) -> dict[str, Tensor]:
    """{'<target>_loss': ..., 'aux_loss': ..., 'loss': weighted total}."""
    class_weights = class_weights or {}
    losses: dict[str, Tensor] = {}
    total = torch.zeros((), device=output.fused.device)
    for name, spec in specs.items():
        loss = target_loss(output.logits[name], targets[name], spec, class_weights.get(name))
        losses[f"{name}_loss"] = loss
        total = total + (loss_weights or {}).get(name, 1.0) * loss
    if aux_weight > 0 and output.aux_logits:
        aux = torch.stack(
            [
                target_loss(per_target[name], targets[name], spec, class_weights.get(name))
                for per_target in output.aux_logits.values()
                for name, spec in specs.items()
            ]
        ).mean()
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
