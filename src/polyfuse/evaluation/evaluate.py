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
    return _run_row_hooks(model, batches, "eval_rows", "calibrate", lambda objective: True)


def fit_objectives_to_trained(model: MultimodalModel, batches: Iterable[Batch]) -> list[str]:
    """Give every objective that has a `fit_to_trained(rows)` hook its `trained_fit_rows` on `batches`
    (the training split, read without augmentation): parts fitted to the trained model's outputs once
    they no longer move, e.g. a vae's cross priors. An objective whose `needs_fit_to_trained` is False is
    skipped (with none left, `batches` is not read). Returns their names."""
    return _run_row_hooks(
        model,
        batches,
        "trained_fit_rows",
        "fit_to_trained",
        lambda objective: bool(getattr(objective, "needs_fit_to_trained", True)),
    )


def _run_row_hooks(
    model: MultimodalModel,
    batches: Iterable[Batch],
    rows_method: str,
    hook_method: str,
    wanted: Callable[[Any], bool],
) -> list[str]:
    """One pass over `batches` collecting each hooked objective's `rows_method(output, batch)`, then its
    `hook_method(rows)`. Both are optional, so not on the Objective protocol: looked up on each."""
    hooks: dict[str, Callable[[dict[str, Tensor]], None]] = {}
    for name in model.objectives:
        hook = getattr(model.objective(name), hook_method, None)
        if callable(hook) and wanted(model.objective(name)):
            hooks[name] = hook
    names = list(hooks)
    if not names:
        return []

    def rows_of(output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        return {
            f"{n}:{k}": v
            for n in names
            for k, v in getattr(model.objective(n), rows_method)(output, batch).items()
        }

    rows = collect(model, batches, rows_of)
    for name, hook in hooks.items():
        prefix = f"{name}:"
        hook({k[len(prefix) :]: v for k, v in rows.items() if k.startswith(prefix)})
    return names
