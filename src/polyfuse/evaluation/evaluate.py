"""Run a model over batches and score every objective on them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from polyfuse.data.batch import Batch
from polyfuse.models.model import ModelOutput, MultimodalModel

RowsFn = Callable[[ModelOutput, Batch], dict[str, Tensor]]


@torch.inference_mode()
def collect(
    model: MultimodalModel, batches: Iterable[Batch], rows: RowsFn, inputs: list[str] | None = None
) -> dict[str, Tensor]:
    """Per-row tensors from `rows(output, batch)` for every batch, concatenated in row order (on CPU).

    `inputs` limits the encoders that run (e.g. only the text encoder to embed a query)."""
    # eval() walks every module and sets its flag through nn.Module.__setattr__: ~0.3 ms on AV-Digits,
    # a tenth of a one-row forward pass, which the server pays per batch. Reading the flags is cheaper.
    if any(module.training for module in model.modules()):
        model.eval()
    parts: dict[str, list[Tensor]] = {}
    for batch in batches:
        output = model.encode(batch, inputs)
        for name, value in rows(output, batch).items():
            value = value.detach().cpu()
            parts.setdefault(name, []).append(value.float() if value.is_floating_point() else value)
    return {k: torch.cat(v) for k, v in parts.items()}


def score_objectives(model: MultimodalModel, batches: Iterable[Batch]) -> dict[str, Any]:
    """Every objective's metrics on the batches, merged: {section: {metric: value}} (supervised sections
    are target names; contrastive adds retrieval_<a>_to_<b>; matching adds consistency)."""
    names = list(model.objectives)

    def eval_rows(output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        merged = {}
        for name in names:
            for key, value in model.objective(name).eval_rows(output, batch).items():
                merged[f"{name}:{key}"] = value
        return merged

    rows = collect(model, batches, eval_rows)
    results: dict[str, Any] = {}
    for name in names:
        prefix = f"{name}:"
        own = {k[len(prefix) :]: v for k, v in rows.items() if k.startswith(prefix)}
        results.update(model.objective(name).score(own))
    return results


def calibrate_objectives(model: MultimodalModel, batches: Iterable[Batch]) -> list[str]:
    """Give every objective that has a `calibrate(rows)` hook its `eval_rows` on `batches` (the
    validation split): e.g. an anomaly threshold at a chosen false-alarm rate. Returns their names."""
    # an optional hook, so not on the Objective protocol: look it up on each objective
    hooks: dict[str, Callable[[dict[str, Tensor]], None]] = {}
    for name in model.objectives:
        hook = getattr(model.objective(name), "calibrate", None)
        if callable(hook):
            hooks[name] = hook
    names = list(hooks)
    if not names:
        return []

    def eval_rows(output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        return {f"{n}:{k}": v for n in names for k, v in model.objective(n).eval_rows(output, batch).items()}

    rows = collect(model, batches, eval_rows)
    for name, calibrate in hooks.items():
        prefix = f"{name}:"
        calibrate({k[len(prefix) :]: v for k, v in rows.items() if k.startswith(prefix)})
    return names
