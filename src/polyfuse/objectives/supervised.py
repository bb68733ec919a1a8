"""The supervised objective: a head per target over the fused vector, plus optional per-input auxiliary heads.

Classification (multi-class / binary), multi-label and regression losses, one per target. Each input's
auxiliary head predicts the targets from that input alone (scored on the rows that have it), which keeps
every encoder as strong as a single-input model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polyfuse.data.preprocess import Preprocessor, TargetSpec
from polyfuse.models.heads import TaskHead
from polyfuse.objectives.base import ObjectiveContext

if TYPE_CHECKING:
    from polyfuse.data.batch import Batch
    from polyfuse.data.table import Table
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
    logits: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    specs: Mapping[str, TargetSpec],
    *,
    class_weights: Mapping[str, Tensor | None] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    aux_logits: Mapping[str, Mapping[str, Tensor]] | None = None,
    aux_present: Mapping[str, Tensor] | None = None,
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
    device = next(iter(logits.values())).device
    total = torch.zeros((), device=device)
    for name, spec in specs.items():
        loss = target_loss(logits[name], targets[name], spec, class_weights.get(name))
        losses[f"{name}_loss"] = loss
        total = total + loss_weights.get(name, 1.0) * loss
    if aux_weight > 0 and aux_logits:
        assert aux_present is not None
        aux = torch.zeros((), device=device)
        for input_name, per_target in aux_logits.items():
            present = aux_present[input_name]
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


class SupervisedObjective(nn.Module):
    """Heads per target over the fused vector (+ per-input auxiliary heads when there are several inputs and
    `training.aux_loss_weight` > 0). Options are read from the config's `heads` and `training` sections."""

    name: ClassVar[str] = "supervised"
    needs_fusion: ClassVar[bool] = True
    capabilities: ClassVar[tuple[str, ...]] = ("predict",)
    # AV-Digits (3 seeds) and AV-Digits-N: accuracy as in fp32 (bench/results/*bf16*)
    trains_in_bf16: ClassVar[bool] = True

    def __init__(self, context: ObjectiveContext, *, targets: list[str] | None = None) -> None:
        super().__init__()
        from polyfuse.models.model import module_key

        chosen = list(context.targets) if targets is None else list(targets)
        unknown = [t for t in chosen if t not in context.targets]
        if unknown or not chosen:
            raise ValueError(
                f"supervised: needs target columns under data.targets (got {chosen or 'none'}); "
                f"targets: {list(context.targets)}"
            )
        config = context.config
        self.specs = {t: context.targets[t] for t in chosen}
        self.target_keys = {t: module_key(t) for t in sorted(self.specs)}
        self.loss_weights = {t: config.head(t).loss_weight for t in self.specs}
        self.aux_weight = config.training.aux_loss_weight
        self.heads = nn.ModuleDict(
            {
                self.target_keys[t]: TaskHead(
                    context.fused_dim, spec, config.head(t).hidden_dim, config.head(t).dropout
                )
                for t, spec in self.specs.items()
            }
        )
        self.aux_inputs = {n: module_key(n) for n in context.inputs} if self.aux_weight > 0 else {}
        if len(self.aux_inputs) < 2:
            self.aux_inputs = {}
        self.aux_heads = nn.ModuleDict(
            {
                key: nn.ModuleDict(
                    {
                        self.target_keys[t]: TaskHead(context.input_dims[name], spec, 0, 0.0)
                        for t, spec in self.specs.items()
                    }
                )
                for name, key in self.aux_inputs.items()
            }
        )
        self.balanced = [
            t
            for t, spec in self.specs.items()
            if config.head(t).class_weights == "balanced" and spec.task != "regression"
        ]
        self.class_weights: dict[str, Tensor | None] = {}  # set by fit_data; not part of the state
        # Temperature per classification target (logits / T in `infer`), from the model directory's
        # calibration.json (polyfuse calibrate); not part of the weights, so scoring (`eval_rows`) and
        # training always see the raw logits.
        self.temperatures: dict[str, float] = {}

    def logits(self, output: ModelOutput) -> dict[str, Tensor]:
        """target → (B, C) / (B, L) logits or (B,) standardised regression values."""
        fused = output.fused
        return {t: self.heads[k](fused) for t, k in self.target_keys.items()}

    def aux_logits(self, output: ModelOutput) -> dict[str, dict[str, Tensor]]:
        """input → target → logits of that input's own head."""
        aux: dict[str, dict[str, Tensor]] = {}
        for name, key in self.aux_inputs.items():
            per_target: nn.ModuleDict = self.aux_heads[key]  # type: ignore[assignment]
            pooled = output.features[name].pooled
            aux[name] = {t: per_target[k](pooled) for t, k in self.target_keys.items()}
        return aux

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        device = output.fused.device
        weights = {t: w.to(device) if w is not None else None for t, w in self.class_weights.items()}
        return supervised_losses(
            self.logits(output),
            batch.targets,
            self.specs,
            class_weights=weights,
            loss_weights=self.loss_weights,
            aux_logits=self.aux_logits(output),
            aux_present={n: output.present[n] for n in self.aux_inputs},
            aux_weight=self.aux_weight,
        )

    def step_metrics(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        logits = self.logits(output)
        return {
            f"{t}_accuracy": (logits[t].argmax(-1) == batch.targets[t]).float().mean()
            for t, spec in self.specs.items()
            if spec.task == "classification"
        }

    def infer(self, output: ModelOutput) -> dict[str, Tensor]:
        logits = self.logits(output)
        return {t: v / self.temperatures[t] if t in self.temperatures else v for t, v in logits.items()}

    def eval_rows(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        rows = {f"logits/{t}": v for t, v in self.logits(output).items()}
        rows.update({f"target/{t}": batch.targets[t] for t in self.specs})
        return rows

    def score(self, rows: dict[str, Tensor]) -> dict[str, Any]:
        # imported when scoring, not with the objective: torchmetrics pulls in transformers and scipy
        # (~1.5 s), which loading a model to predict does not need
        from polyfuse.evaluation.metrics import target_metrics

        return {
            t: target_metrics(rows[f"logits/{t}"], rows[f"target/{t}"], spec)
            for t, spec in self.specs.items()
        }

    def fit_data(self, train: Table, preprocessor: Preprocessor) -> None:
        """Class weights from the training rows for targets whose head asks for 'balanced'."""
        self.class_weights = {}
        if not self.balanced:
            return
        encoded = [
            preprocessor.encode_targets({str(k): v for k, v in r.items()})
            for r in train.frame.to_dict("records")
        ]
        for t in self.balanced:
            self.class_weights[t] = balanced_class_weights(
                torch.stack([e[t] for e in encoded]), self.specs[t]
            )
