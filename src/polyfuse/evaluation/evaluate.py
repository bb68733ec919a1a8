"""Run a model over a table and score it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from polyfuse.data.batch import Batch
from polyfuse.data.preprocess import TargetSpec
from polyfuse.evaluation.metrics import target_metrics
from polyfuse.models.model import MultimodalModel


@torch.inference_mode()
def collect_outputs(
    model: MultimodalModel, batches: Iterable[Batch], with_targets: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """Concatenated head outputs, targets, fused vectors (N, D) and per-input embeddings, in row order."""
    model.eval()
    outputs: dict[str, list[Tensor]] = {}
    targets: dict[str, list[Tensor]] = {}
    fused: list[Tensor] = []
    embeddings: dict[str, list[Tensor]] = {}
    for batch in batches:
        result = model(batch)
        for name, value in result.logits.items():
            outputs.setdefault(name, []).append(value.float().cpu())
        if with_targets:
            for name, value in batch.targets.items():
                targets.setdefault(name, []).append(value.cpu())
        fused.append(result.fused.float().cpu())
        for name, value in result.embeddings.items():
            embeddings.setdefault(name, []).append(value.float().cpu())
    return _cat(outputs), _cat(targets), torch.cat(fused) if fused else torch.zeros(0), _cat(embeddings)


def _cat(parts: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    return {k: torch.cat(v) for k, v in parts.items()}


def score(
    outputs: dict[str, Tensor], targets: dict[str, Tensor], specs: dict[str, TargetSpec]
) -> dict[str, Any]:
    """target → metrics."""
    return {name: target_metrics(outputs[name], targets[name], spec) for name, spec in specs.items()}
