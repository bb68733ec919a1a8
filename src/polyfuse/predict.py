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
from polyfuse.progress import progress_bar

Rows = pd.DataFrame | Sequence[dict[str, Any]]


class Predictor:
    """A loaded model. `rows` are a DataFrame or a list of dicts keyed by the training table's column
    names; images and audio as paths (relative to `base_dir`), bytes or base64; any input may be missing
    (None, NaN or an absent key)."""

    def __init__(self, directory: Path | str, batch_size: int = 64, show_progress: bool = False) -> None:
        self.directory = Path(directory)
        self.model, self.config, self.preprocessor, self.info = load_model(self.directory)
        self.specs = self.preprocessor.state.targets
        self.batch_size = batch_size
        self.show_progress = show_progress  # a rich progress bar over the batches (the CLI turns it on)
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
        with progress_bar("predicting", total=len(dataset), enabled=self.show_progress) as advance:
            for start in range(0, len(dataset), self.batch_size):
                stop = min(start + self.batch_size, len(dataset))
                yield self._collate([dataset[i] for i in range(start, stop)])
                advance(stop - start)

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

    def _labels(self, outputs: dict[str, torch.Tensor]) -> pd.DataFrame:
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

    def _probabilities(self, outputs: dict[str, torch.Tensor], target: str) -> pd.DataFrame:
        spec = self.specs[target]
        logits = outputs[target]
        probs = torch.sigmoid(logits) if spec.task == "multilabel" else torch.softmax(logits, -1)
        return pd.DataFrame(probs.numpy(), columns=spec.classes)

    def predict(self, rows: Rows | Table, base_dir: Path | None = None) -> pd.DataFrame:
        """One column per target: the predicted class name, the '|'-joined labels over 0.5 (multi-label),
        or the value (regression)."""
        return self._labels(self._outputs(rows, base_dir)[0])

    def predict_proba(
        self, rows: Rows | Table, target: str | None = None, base_dir: Path | None = None
    ) -> pd.DataFrame:
        """Class probabilities (N, C) for one target (default: the only / first classification target),
        columns named by class."""
        target = target or next((t for t, s in self.specs.items() if s.task != "regression"), None)
        if target is None or target not in self.specs or self.specs[target].task == "regression":
            raise ValueError(f"predict_proba needs a classification target; targets: {self.targets}")
        return self._probabilities(self._outputs(rows, base_dir)[0], target)

    def predict_table(self, rows: Rows | Table, base_dir: Path | None = None) -> pd.DataFrame:
        """Labels / values per target plus `<target>_proba_<class>` columns, from one pass of the model."""
        outputs = self._outputs(rows, base_dir)[0]
        parts = [self._labels(outputs)]
        for target, spec in self.specs.items():
            if spec.task != "regression":
                parts.append(self._probabilities(outputs, target).add_prefix(f"{target}_proba_"))
        return pd.concat(parts, axis=1)

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
