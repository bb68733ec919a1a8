"""Late fusion: separately trained models, each reading some of the inputs, vote by averaging their class
probabilities (the classic baseline a fused model has to beat).

A member whose inputs are all missing in a row has nothing to say about it, so its vote is left out of that
row's mean; a row that no member can read gets the mean over every member (each one's prior for a row
without its input, as it learned in training). Only classification and multi-label targets can be averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from polyfuse.data.errors import DataError
from polyfuse.data.media import is_missing
from polyfuse.data.preprocess import Preprocessor, TargetSpec
from polyfuse.data.table import Table, read_table
from polyfuse.evaluation.tables import input_columns

if TYPE_CHECKING:
    from polyfuse.predict import Predictor, Rows


class LateFusionEnsemble:
    """Several loaded models (e.g. an image-only and an audio-only one) as one: `predict_proba` averages
    the members' probabilities, `evaluate` scores the averaged probabilities like `Predictor.evaluate`."""

    def __init__(self, members: Sequence[Predictor]) -> None:
        if not members:
            raise ValueError("a late-fusion ensemble needs at least one member model")
        self.members = list(members)
        self.specs = _shared_specs(self.members)
        # input name → the preprocessor of the first member that reads it: degrading an input for every
        # member at once (robustness curves) needs its modality and training statistics
        self.input_preprocessors: dict[str, Preprocessor] = {}
        for member in self.members:
            for name in member.model.input_keys:
                self.input_preprocessors.setdefault(name, member.preprocessor)

    @property
    def targets(self) -> list[str]:
        return list(self.specs)

    def votes(self, table: Table) -> npt.NDArray[np.bool_]:
        """(N, M) whether member m reads an input that row n has (its vote counts), all True in rows where
        no member has an input."""
        frame = table.frame
        columns = []
        for member in self.members:
            has_input = np.zeros(len(frame), dtype=bool)
            for name in member.model.input_keys:
                for column in input_columns(member.preprocessor, name):
                    if column in frame.columns:
                        has_input |= ~frame[column].map(_blank).to_numpy(dtype=bool)
            columns.append(has_input)
        votes = np.stack(columns, axis=1)
        votes[~votes.any(axis=1)] = True
        return votes

    def probabilities(self, table: Table) -> dict[str, torch.Tensor]:
        """Target → (N, C) mean class probabilities of the members that vote on each row."""
        votes = torch.from_numpy(self.votes(table)).float()  # (N, M)
        weights = votes / votes.sum(1, keepdim=True)
        mean: dict[str, torch.Tensor] = {}
        for m, member in enumerate(self.members):
            scored = member.predict_table(table)  # one pass per member: every target's probabilities
            for target, spec in self.specs.items():
                columns = [f"{target}_proba_{c}" for c in spec.classes]
                probs = torch.tensor(scored[columns].to_numpy(dtype=np.float32))  # (N, C)
                mean[target] = mean.get(target, 0) + weights[:, m : m + 1] * probs
        return mean

    def predict_proba(
        self, rows: Rows | Table, target: str | None = None, base_dir: Path | None = None
    ) -> pd.DataFrame:
        """Class probabilities (N, C) for one target (default: the first), columns named by class; rows as
        `Predictor.predict_proba` takes them."""
        target = target or next(iter(self.specs))
        if target not in self.specs:
            raise ValueError(f"unknown target {target!r}; targets: {self.targets}")
        table = rows if isinstance(rows, Table) else read_table(_records(rows), base_dir)
        probs = self.probabilities(table)[target]
        return pd.DataFrame(probs.numpy(), columns=self.specs[target].classes)

    def evaluate(self, table: Table) -> dict[str, Any]:
        """Target → metrics of the averaged probabilities, as `Predictor.evaluate` reports them."""
        from polyfuse.evaluation.metrics import target_metrics

        encoded = self._encoded_targets(table)
        results: dict[str, Any] = {}
        for target, probs in self.probabilities(table).items():
            spec = self.specs[target]
            actual = torch.stack([row[target] for row in encoded]) if encoded else torch.empty(0)
            clamped = probs.clamp(1e-7, 1 - 1e-7)
            # target_metrics takes logits: argmax of log p picks the same class; sigmoid(logit p) = p
            outputs = clamped.log() if spec.task == "classification" else torch.logit(clamped)
            results[target] = target_metrics(outputs, actual, spec)
        return results

    def _encoded_targets(self, table: Table) -> list[dict[str, torch.Tensor]]:
        """Each row's targets as the members were trained on them; a missing or unseen label names its row."""
        preprocessor = self.members[0].preprocessor
        encoded = []
        for index, row in enumerate(table.frame.to_dict("records")):
            try:
                encoded.append(preprocessor.encode_targets({str(k): v for k, v in row.items()}))
            except DataError as e:
                raise DataError([p.at_row(index) for p in e.problems]) from None
        return encoded


def _records(rows: Rows) -> pd.DataFrame | list[dict[str, Any]]:
    return rows if isinstance(rows, pd.DataFrame) else list(rows)


def _blank(cell: Any) -> bool:
    """A cell that means 'this row lacks the input' (None, NaN, a blank string, empty bytes)."""
    return not isinstance(cell, list | tuple) and is_missing(cell)


def _shared_specs(members: Sequence[Predictor]) -> dict[str, TargetSpec]:
    """The classification / multi-label targets every member predicts, with the same classes."""
    first = members[0]
    specs = {t: s for t, s in first.specs.items() if s.task != "regression"}
    if not specs:
        raise ValueError(
            f"late fusion averages class probabilities; {first.directory} has no classification target "
            f"(targets: {first.targets})"
        )
    for member in members[1:]:
        for target, spec in specs.items():
            theirs = member.specs.get(target)
            if theirs is None or theirs.task != spec.task or theirs.classes != spec.classes:
                raise ValueError(
                    f"{member.directory} does not predict target {target!r} with the classes of "
                    f"{first.directory} ({spec.task}, {spec.classes[:10]}); late fusion needs members "
                    "trained on the same target"
                )
    return specs
