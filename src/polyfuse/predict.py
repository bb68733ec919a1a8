"""`polyfuse.load(dir) -> Predictor`: predictions, probabilities and embeddings for new rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from polyfuse.artifact import load_model
from polyfuse.data.batch import Batch
from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.errors import DataError
from polyfuse.data.table import Table, read_table
from polyfuse.evaluation.evaluate import collect_outputs, score

Rows = pd.DataFrame | Sequence[dict[str, Any]]


class Predictor:
    """A loaded model. `rows` are a DataFrame or a list of dicts keyed by the training table's column
    names; images and audio as paths (relative to `base_dir`), bytes or base64; any input may be missing
    (None, NaN or an absent key)."""

    def __init__(self, directory: Path | str, batch_size: int = 64) -> None:
        self.directory = Path(directory)
        self.model, self.config, self.preprocessor, self.info = load_model(self.directory)
        self.specs = self.preprocessor.state.targets
        self.batch_size = batch_size
        self._collate = make_collate(self.preprocessor)

    @property
    def targets(self) -> list[str]:
        return list(self.specs)

    def _table(self, rows: Rows | Table, base_dir: Path | None) -> Table:
        if isinstance(rows, Table):
            return rows
        if isinstance(rows, pd.DataFrame):
            return read_table(rows, base_dir)
        return read_table(list(rows), base_dir)

    def _batches(self, table: Table, with_targets: bool) -> Iterator[Batch]:
        dataset = MultimodalDataset(table, self.preprocessor, with_targets=with_targets)
        for start in range(0, len(dataset), self.batch_size):
            yield self._collate(
                [dataset[i] for i in range(start, min(start + self.batch_size, len(dataset)))]
            )

    def _outputs(
        self, rows: Rows | Table, base_dir: Path | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        table = self._table(rows, base_dir)
        if len(table) == 0:
            raise DataError("no rows to predict")
        outputs, _, fused, embeddings = collect_outputs(
            self.model, self._batches(table, False), with_targets=False
        )
        return outputs, fused, embeddings

    def predict(self, rows: Rows | Table, base_dir: Path | None = None) -> pd.DataFrame:
        """One column per target: the predicted class name, the '|'-joined labels over 0.5 (multi-label),
        or the value (regression)."""
        outputs, _, _ = self._outputs(rows, base_dir)
        columns: dict[str, list[Any]] = {}
        for target, spec in self.specs.items():
            out = outputs[target]
            if spec.task == "regression":
                columns[target] = (out * spec.std + spec.mean).tolist()
            elif spec.task == "multilabel":
                chosen = torch.sigmoid(out) > 0.5
                columns[target] = [
                    "|".join(c for c, on in zip(spec.classes, row, strict=True) if on)
                    for row in chosen.tolist()
                ]
            else:
                columns[target] = [spec.classes[i] for i in out.argmax(-1).tolist()]
        return pd.DataFrame(columns)

    def predict_proba(
        self, rows: Rows | Table, target: str | None = None, base_dir: Path | None = None
    ) -> pd.DataFrame:
        """Class probabilities (N, C) for one target (default: the only / first classification target),
        columns named by class."""
        target = target or next((t for t, s in self.specs.items() if s.task != "regression"), None)
        if target is None or target not in self.specs or self.specs[target].task == "regression":
            raise ValueError(f"predict_proba needs a classification target; targets: {self.targets}")
        outputs, _, _ = self._outputs(rows, base_dir)
        spec = self.specs[target]
        logits = outputs[target]
        probs = torch.sigmoid(logits) if spec.task == "multilabel" else torch.softmax(logits, -1)
        return pd.DataFrame(probs.numpy(), columns=spec.classes)

    def embed(
        self, rows: Rows | Table, modality: str | None = None, base_dir: Path | None = None
    ) -> np.ndarray:
        """(N, D) fused embeddings, or one input's pooled encoder output with modality='<input name>'."""
        _, fused, embeddings = self._outputs(rows, base_dir)
        if modality is None:
            return fused.numpy()
        if modality not in embeddings:
            raise ValueError(f"unknown input {modality!r}; inputs: {sorted(embeddings)}")
        return embeddings[modality].numpy()

    def evaluate(self, table: Table) -> dict[str, Any]:
        """Metrics per target on a table that holds the target columns."""
        outputs, targets, _, _ = collect_outputs(self.model, self._batches(table, True))
        return score(outputs, targets, self.specs)


def load(directory: Path | str) -> Predictor:
    """Load a model directory written by `polyfuse train` (offline; no pickle)."""
    return Predictor(directory)
