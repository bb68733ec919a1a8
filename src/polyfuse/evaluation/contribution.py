"""Which input decided? Per-row attributions over inputs and each input's contribution to a metric.

Removing an input is done the way the model met missing inputs in training: the input is marked absent
(`present` False), so the fusion uses its learned stand-in for that input. Per row (`explain_rows`):
- leave-one-input-out: p(all inputs) − p(all but input i), for the class predicted with all inputs;
- Shapley values over inputs with the value function v(S) = p(class | only the inputs in S): exact (all
  2^M subsets) for M ≤ 4 inputs, estimated from seeded random input orders above that.
They sum to p(all) − p(none) (efficiency), which is checked in the tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polyfuse.data.batch import Batch
from polyfuse.data.table import Table
from polyfuse.evaluation.tables import PRIMARY_METRIC, default_target, permuted_input, without_input
from polyfuse.models.model import ModelOutput

if TYPE_CHECKING:
    from polyfuse.predict import Predictor

EXACT_SHAPLEY_MAX_INPUTS = 4
SAMPLED_PERMUTATIONS = 64


def _with_present(output: ModelOutput, present: dict[str, Tensor]) -> ModelOutput:
    """The same encoder outputs with other presence masks; the fusion sees exactly these inputs."""
    return ModelOutput(
        output.features,
        present,
        lambda features, mask, modality_dropout=False: output.fuse(features, mask, modality_dropout=False),
    )


def _values(logits: Tensor, task: str) -> Tensor:
    """(B, C) logits → (B, C) probabilities; regression (B,) → (B, 1) predicted (standardised) values."""
    if task == "regression":
        return logits[:, None]
    return torch.softmax(logits, -1)


@torch.inference_mode()
def _subset_values(
    predictor: Predictor, batch: Batch, target: str, subsets: list[tuple[bool, ...]]
) -> Tensor:
    """(S, B, C) the target's probabilities (or value) with only each subset's inputs present."""
    model = predictor.model
    objective = model.objective(predictor._require("predict"))
    names = list(model.input_keys)
    output = model.encode(batch)
    task = predictor.specs[target].task
    found = []
    for subset in subsets:
        present = {n: output.present[n] & keep for n, keep in zip(names, subset, strict=True)}
        found.append(_values(objective.infer(_with_present(output, present))[target], task))
    return torch.stack(found)


def _shapley_weights(m: int) -> dict[int, float]:
    """|S|!(M−|S|−1)!/M! per coalition size |S| of the other inputs."""
    return {s: math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)}


def explain_rows(
    predictor: Predictor,
    table: Table,
    target: str | None = None,
    *,
    shapley: bool = True,
    permutations: int = SAMPLED_PERMUTATIONS,
    seed: int = 0,
) -> pd.DataFrame:
    """Per row: the predicted class (or value), its probability, `base` (with no input), and for each input
    `loo_<input>` and `shapley_<input>`. `attrs["shapley_method"]` says "exact" or "sampled (P orders)"."""
    if len(table) == 0:
        raise ValueError("no rows to explain")
    target = default_target(predictor.specs, target)
    spec = predictor.specs[target]
    if spec.task == "multilabel":
        raise ValueError(f"explain covers classification and regression targets; {target!r} is multi-label")
    names = list(predictor.model.input_keys)
    m = len(names)
    exact = m <= EXACT_SHAPLEY_MAX_INPUTS
    full = tuple([True] * m)
    none = tuple([False] * m)
    leave_one_out = [tuple(j != i for j in range(m)) for i in range(m)]
    if not shapley:
        subsets = [full, none, *leave_one_out]
    elif exact:
        subsets = list(itertools.product([False, True], repeat=m))
    else:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(m).tolist() for _ in range(permutations)]
        prefixes = {
            tuple(k in order[:length] for k in range(m)) for order in orders for length in range(m + 1)
        }
        subsets = sorted(prefixes | {full, none, *leave_one_out})
    index = {s: k for k, s in enumerate(subsets)}

    columns: dict[str, list[Any]] = {}
    for batch in predictor._batches(table, with_targets=False):
        values = _subset_values(predictor, batch, target, subsets)  # (S, B, C)
        chosen = values[index[full]].argmax(-1)  # (B,) predicted class (0 for regression)
        v = values.gather(2, chosen.view(1, -1, 1).expand(len(subsets), -1, 1)).squeeze(2)  # (S, B)
        scale = (spec.std, spec.mean) if spec.task == "regression" else (1.0, 0.0)
        v = v * scale[0]  # differences in the target's own units
        p_full = v[index[full]]
        predicted = (
            [spec.classes[i] for i in chosen.tolist()]
            if spec.task != "regression"
            else (p_full + scale[1]).tolist()
        )
        columns.setdefault("predicted", []).extend(predicted)
        if spec.task != "regression":
            columns.setdefault("probability", []).extend(p_full.tolist())
        columns.setdefault("base", []).extend((v[index[none]] + scale[1]).tolist())
        for i, name in enumerate(names):
            columns.setdefault(f"loo_{name}", []).extend((p_full - v[index[leave_one_out[i]]]).tolist())
        if shapley:
            phi = _exact_shapley(v, subsets, index, m) if exact else _sampled_shapley(v, orders, index, m)
            for i, name in enumerate(names):
                columns.setdefault(f"shapley_{name}", []).extend(phi[i].tolist())
    frame = pd.DataFrame(columns)
    frame.attrs["target"] = target
    frame.attrs["shapley_method"] = (
        "none" if not shapley else "exact" if exact else f"sampled ({permutations} input orders)"
    )
    return frame


def _exact_shapley(
    v: Tensor, subsets: list[tuple[bool, ...]], index: dict[tuple[bool, ...], int], m: int
) -> Tensor:
    """(M, B) exact Shapley values from v (S, B) over all 2^M subsets."""
    weights = _shapley_weights(m)
    phi = torch.zeros(m, v.shape[1])
    for subset in subsets:
        for i in range(m):
            if subset[i]:
                continue
            joined = tuple(keep or j == i for j, keep in enumerate(subset))
            phi[i] += weights[sum(subset)] * (v[index[joined]] - v[index[subset]])
    return phi


def _sampled_shapley(
    v: Tensor, orders: list[list[int]], index: dict[tuple[bool, ...], int], m: int
) -> Tensor:
    """(M, B) Shapley values estimated as the mean marginal contribution over random input orders."""
    phi = torch.zeros(m, v.shape[1])
    for order in orders:
        kept = [False] * m
        for i in order:
            before = index[tuple(kept)]
            kept[i] = True
            phi[i] += v[index[tuple(kept)]] - v[before]
    return phi / len(orders)


def _metric(predictor: Predictor, table: Table, target: str) -> float:
    return float(predictor.evaluate(table)[target][PRIMARY_METRIC[predictor.specs[target].task]])


def modality_contribution(
    predictor: Predictor,
    table: Table,
    target: str | None = None,
    *,
    seed: int = 0,
    explanations: pd.DataFrame | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Each input's contribution to the target's metric on `table` (which holds the targets).

    Returns {"target", "metric", "full", "inputs": {input: {"removed", "permuted", "drop_removed",
    "drop_permuted", "mean_abs_shapley", "shapley_share"}}}: the metric with the input missing in every
    row, with it permuted across rows (seeded), the drops from `full`, and the mean |Shapley value| of the
    predicted class's probability over the rows with its share of the sum over inputs."""
    target = default_target(predictor.specs, target)
    tick = progress or (lambda: None)
    full = _metric(predictor, table, target)
    tick()
    if explanations is None and predictor.specs[target].task != "multilabel":
        explanations = explain_rows(predictor, table, target, seed=seed)
    tick()
    names = list(predictor.model.input_keys)
    magnitude = {
        n: float(explanations[f"shapley_{n}"].abs().mean())
        for n in names
        if explanations is not None and f"shapley_{n}" in explanations
    }
    total = sum(magnitude.values())
    inputs: dict[str, Any] = {}
    for k, name in enumerate(names):
        removed = _metric(predictor, without_input(table, predictor.preprocessor, name), target)
        tick()
        permuted = _metric(predictor, permuted_input(table, predictor.preprocessor, name, seed + k), target)
        tick()
        inputs[name] = {
            "removed": removed,
            "permuted": permuted,
            "drop_removed": full - removed,
            "drop_permuted": full - permuted,
        }
        if name in magnitude:
            inputs[name]["mean_abs_shapley"] = magnitude[name]
            inputs[name]["shapley_share"] = magnitude[name] / total if total > 0 else 0.0
    return {
        "target": target,
        "metric": PRIMARY_METRIC[predictor.specs[target].task],
        "rows": len(table),
        "full": full,
        "inputs": inputs,
    }


def contribution_steps(n_inputs: int) -> int:
    """How many times `modality_contribution` calls `progress`."""
    return 2 + 2 * n_inputs
