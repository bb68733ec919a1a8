"""`polyfuse.load(dir) -> Predictor`: what a trained model's objectives can do for new rows.

predict / predict_proba (supervised), embed and zero_shot (contrastive), consistency (matching); `search`
over an index lives in `polyfuse.retrieval`."""

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
from polyfuse.data.schema import Modality
from polyfuse.data.table import Table, read_table
from polyfuse.evaluation.evaluate import RowsFn, collect, score_objectives
from polyfuse.models.model import ModelOutput
from polyfuse.progress import progress_bar

Rows = pd.DataFrame | Sequence[dict[str, Any]]
# Prompts for zero-shot classification; each label fills the braces, embeddings are averaged (CLIP does the
# same with 80 ImageNet templates). Pass your own when your captions read differently.
DEFAULT_TEMPLATES = ("{}", "a {}", "the {}", "this is {}", "an example of {}")


class Predictor:
    """A loaded model. `rows` are a DataFrame or a list of dicts keyed by the training table's column
    names; images and audio as paths (relative to `base_dir`), bytes or base64; any input may be missing
    (None, NaN or an absent key)."""

    def __init__(self, directory: Path | str, batch_size: int = 64, show_progress: bool = False) -> None:
        self.directory = Path(directory)
        self.model, self.config, self.preprocessor, self.info = load_model(self.directory)
        supervised = self.model.objectives_for("predict")
        self.specs = dict(self.model.objective(supervised[0]).specs) if supervised else {}  # type: ignore[attr-defined]
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
                yield self._collate(dataset.__getitems__(range(start, stop)))
                advance(stop - start)

    def _require(self, capability: str) -> str:
        """The objective that makes `capability` possible, or a clear error saying how to get one."""
        found = self.model.objectives_for(capability)
        if not found:
            needed = {
                "predict": "supervised",
                "consistency": "matching",
                "generate": "vae",
                "anomaly": "vae",
            }.get(capability, "contrastive")
            raise DataError(
                f"this model cannot {capability.replace('_', '-')}: it was trained with objectives "
                f"{list(self.model.objectives)}; train one with the '{needed}' objective "
                f"(polyfuse init TABLE --objective {needed})"
            )
        return found[0]

    def _collect(
        self, rows: Rows | Table, base_dir: Path | None, fn: RowsFn, inputs: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        table = self._table(rows, base_dir)
        if len(table) == 0:
            raise DataError("no rows to predict")
        return collect(self.model, self._batches(table, False), fn, inputs)

    def _supervised_outputs(self, rows: Rows | Table, base_dir: Path | None) -> dict[str, torch.Tensor]:
        objective = self.model.objective(self._require("predict"))
        return self._collect(rows, base_dir, lambda output, _: objective.infer(output))

    def _labels(self, outputs: dict[str, torch.Tensor]) -> pd.DataFrame:
        return pd.DataFrame(self._label_columns(outputs))

    def _label_columns(self, outputs: dict[str, torch.Tensor]) -> dict[str, list[Any]]:
        """Target → one label (or value) per row: what `_labels` puts in its frame, without pandas."""
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
        return columns

    def _probabilities(self, outputs: dict[str, torch.Tensor], target: str) -> pd.DataFrame:
        return pd.DataFrame(
            self._probability_tensor(outputs, target).numpy(), columns=self.specs[target].classes
        )

    def _probability_tensor(self, outputs: dict[str, torch.Tensor], target: str) -> torch.Tensor:
        """(N, C) class probabilities of a classification or multi-label target, columns in `classes` order."""
        logits = outputs[target]
        return torch.sigmoid(logits) if self.specs[target].task == "multilabel" else torch.softmax(logits, -1)

    def predict(self, rows: Rows | Table, base_dir: Path | None = None) -> pd.DataFrame:
        """One column per target: the predicted class name, the '|'-joined labels over 0.5 (multi-label),
        or the value (regression); a model with an anomaly score (autoencoder, vae) adds `anomaly_score`
        and the flag `anomaly` (score over the threshold calibrated on the validation split)."""
        if self.model.objectives_for("anomaly") and not self.specs:
            return self.anomaly(rows, base_dir)
        labels = self._labels(self._supervised_outputs(rows, base_dir))
        if self.model.objectives_for("anomaly"):
            return pd.concat([labels, self.anomaly(rows, base_dir)], axis=1)
        return labels

    def anomaly(self, rows: Rows | Table, base_dir: Path | None = None) -> pd.DataFrame:
        """`anomaly_score` per row (the autoencoder's reconstruction error or the vae's negative ELBO, per
        modelled value; NaN for a row with none of its inputs) and `anomaly`: True where the score is over
        the threshold calibrated on the validation split (at the objective's false_alarm_rate)."""
        objective: Any = self.model.objective(self._require("anomaly"))
        found = self._collect(rows, base_dir, objective.anomaly_rows)
        return pd.DataFrame(
            {
                "anomaly_score": found["anomaly_score"].numpy(),
                "anomaly": found["anomaly"].numpy().astype(bool),
            }
        )

    def generate(
        self,
        rows: Rows | Table | None = None,
        target: str = "image",
        *,
        n: int = 1,
        from_inputs: Sequence[str] | None = None,
        temperature: float = 1.0,
        seed: int = 0,
        base_dir: Path | None = None,
    ) -> list[Any]:
        """Generate `target` for each row from the row's other inputs (or `from_inputs`), or, with `rows`
        None, `n` unconditional samples from the prior (vae only). Returns one value per row: a PIL image,
        a float32 waveform at the preprocessing's sample rate, or {column: value} for tabular inputs.

        temperature scales the latent noise (0: the posterior mean, the most typical sample)."""
        from polyfuse.generation import to_media

        objective: Any = self.model.objective(self._require("generate"))
        if target not in objective.decoded:
            raise ValueError(f"cannot generate '{target}': the model rebuilds {objective.decoded}")
        generator = torch.Generator().manual_seed(seed)
        if rows is None:
            if n < 1:
                raise ValueError(f"n must be >= 1, got {n}")
            self.model.eval()
            with torch.inference_mode():
                raw = objective.generate(None, target, n, temperature, generator)
            return to_media(objective, target, raw.cpu(), self.preprocessor)
        sources = [i for i in (from_inputs or objective.inputs) if i != target or from_inputs is not None]
        unknown = [i for i in sources if i not in objective.inputs]
        if unknown:
            raise ValueError(f"cannot generate from {unknown}: the model's inputs are {objective.inputs}")

        def generated(output: ModelOutput, _: Batch) -> dict[str, torch.Tensor]:
            present = {k: v & (k in sources) for k, v in output.present.items()}
            chosen = output.with_present(present)
            return {"raw": objective.generate(chosen, target, 1, temperature, generator)}

        raw = self._collect(rows, base_dir, generated)["raw"]
        return to_media(objective, target, raw, self.preprocessor)

    def predict_proba(
        self, rows: Rows | Table, target: str | None = None, base_dir: Path | None = None
    ) -> pd.DataFrame:
        """Class probabilities (N, C) for one target (default: the only / first classification target),
        columns named by class."""
        self._require("predict")
        target = target or next((t for t, s in self.specs.items() if s.task != "regression"), None)
        if target is None or target not in self.specs or self.specs[target].task == "regression":
            raise ValueError(f"predict_proba needs a classification target; targets: {self.targets}")
        return self._probabilities(self._supervised_outputs(rows, base_dir), target)

    def predict_table(self, rows: Rows | Table, base_dir: Path | None = None) -> pd.DataFrame:
        """What the model's objectives predict for each row, from one pass: labels / values per target plus
        `<target>_proba_<class>` columns (supervised), and a `consistency` column (matching)."""
        wanted = self.model.objectives_for("predict")[:1] + self.model.objectives_for("consistency")[:1]
        anomaly = self.model.objectives_for("anomaly")[:1]
        if not wanted and not anomaly:
            raise DataError(
                f"this model's objectives {list(self.model.objectives)} predict no column per row; use "
                "embed, search or zero_shot"
            )
        model = self.model

        def per_row(output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
            found = {k: v for name in wanted for k, v in model.objective(name).infer(output).items()}
            for name in anomaly:  # the score compares the rows' inputs with their reconstruction
                found.update(model.objective(name).anomaly_rows(output, batch))  # type: ignore[attr-defined]
            return found

        outputs = self._collect(rows, base_dir, per_row)  # one pass: each row decoded once
        parts = []
        if self.specs:
            parts.append(self._labels(outputs))
            for target, spec in self.specs.items():
                if spec.task != "regression":
                    parts.append(self._probabilities(outputs, target).add_prefix(f"{target}_proba_"))
        if "consistency" in outputs:
            parts.append(pd.DataFrame({"consistency": outputs["consistency"].numpy()}))
        if "anomaly_score" in outputs:
            parts.append(
                pd.DataFrame(
                    {
                        "anomaly_score": outputs["anomaly_score"].numpy(),
                        "anomaly": outputs["anomaly"].numpy().astype(bool),
                    }
                )
            )
        return pd.concat(parts, axis=1)

    def embed(
        self, rows: Rows | Table, modality: str | None = None, base_dir: Path | None = None
    ) -> np.ndarray:
        """(N, D) L2-normalised embeddings.

        modality='<input name>': that input's vector — in the shared space of a contrastive model (so an
        image and a sentence can be compared), else the input's pooled encoder output; only that input's
        encoder runs, and rows lacking the input get a row of NaN. modality=None: the fused vector (a
        contrastive model without a fusion: the mean of the row's shared-space vectors)."""
        if modality is not None:
            return self.embed_inputs(rows, [modality], base_dir)[modality]
        aligned = self._aligned()
        if self.model.fusion is None and aligned is None:
            self._require("embed")
        model = self.model
        found = self._collect(rows, base_dir, lambda o, _: {"vectors": row_embedding(model, aligned, o)})
        return found["vectors"].numpy()

    def embed_inputs(
        self, rows: Rows | Table, inputs: Sequence[str], base_dir: Path | None = None
    ) -> dict[str, np.ndarray]:
        """input → (N, E) L2-normalised vectors from one pass over the rows (only those encoders run): in
        the shared space for inputs a contrastive objective aligns, else the pooled encoder output. Rows
        lacking an input get NaN."""
        known = list(self.model.input_keys)
        unknown = [n for n in inputs if n not in known]
        if unknown:
            raise ValueError(f"unknown input {unknown[0]!r}; inputs: {sorted(known)}")
        aligned = self._aligned()
        shared = set(aligned.inputs) if aligned is not None else set()

        def vectors(output: ModelOutput, _: Batch) -> dict[str, torch.Tensor]:
            space = aligned.embed(output) if shared else {}
            pooled = _pooled(output)
            return {
                n: torch.where(
                    output.present[n][:, None], space[n] if n in shared else pooled[n], float("nan")
                )
                for n in inputs
            }

        found = self._collect(rows, base_dir, vectors, list(inputs))
        return {n: found[n].numpy() for n in inputs}

    def search(
        self, index: Any, query: dict[str, Any], *, target: str | None = None, k: int = 10
    ) -> pd.DataFrame:
        """The k rows of an index (an `Index` or its folder) nearest to one query row, e.g.
        `search("idx", {"caption": "a spoken seven"}, target="image")`: `query` holds one input's value;
        `target` is the indexed input to search (default: the only indexed input other than the query's).
        Returns rank, score, the table row and the row's columns."""
        from polyfuse.retrieval import search_index

        return search_index(self, index, query, target=target, k=k)

    def _aligned(self) -> Any:
        found = self.model.objectives_for("embed")
        return self.model.objective(found[0]) if found else None

    def consistency(self, rows: Rows | Table, base_dir: Path | None = None) -> np.ndarray:
        """(N,) probability that each row's inputs belong together (matching objective); NaN for rows with
        fewer than two of the judged inputs."""
        objective = self.model.objective(self._require("consistency"))
        scores = self._collect(rows, base_dir, lambda o, _: objective.infer(o))
        return scores["consistency"].numpy()

    def zero_shot(
        self,
        rows: Rows | Table,
        labels: Sequence[str],
        *,
        modality: str | None = None,
        text_input: str | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        base_dir: Path | None = None,
    ) -> pd.DataFrame:
        """Classify rows by the label whose prompts lie nearest in the shared space (CLIP's zero-shot).

        Each label is written into every template ("a photo of {}" → "a photo of seven"); the prompts'
        text embeddings are averaged per label. `modality` is the input of `rows` to classify (default: the
        one aligned non-text input); `text_input` the aligned text column (default: the only one).
        Returns a `label` column and one probability column per label (softmax over the model's scale)."""
        aligned: Any = self.model.objective(self._require("zero_shot"))
        texts = [n for n in aligned.inputs if self.preprocessor.inputs[n] is Modality.TEXT]
        text_input = text_input or (texts[0] if len(texts) == 1 else None)
        if text_input is None or text_input not in texts:
            raise ValueError(
                f"zero-shot needs a text input aligned by the contrastive objective; pass text_input= one of "
                f"{texts}"
                if texts
                else "zero-shot needs a text input among the contrastive inputs"
            )
        others = [n for n in aligned.inputs if n != text_input]
        modality = modality or (others[0] if len(others) == 1 else None)
        if modality not in others:
            raise ValueError(f"pass modality= one of {others}: the input of the rows to classify")
        if not labels or not templates:
            raise ValueError("zero_shot needs at least one label and one template")
        prompts: list[dict[str, Any]] = [
            {text_input: template.format(label)} for label in labels for template in templates
        ]
        text = torch.from_numpy(self.embed(prompts, modality=text_input))  # (L·T, E)
        classes = torch.nn.functional.normalize(text.view(len(labels), len(templates), -1).mean(1), dim=-1)
        vectors = torch.from_numpy(self.embed(rows, modality=modality, base_dir=base_dir))  # (N, E)
        probabilities = torch.softmax(aligned.scale().detach() * vectors @ classes.T, dim=-1)  # (N, L)
        frame = pd.DataFrame(probabilities.numpy(), columns=[f"proba_{label}" for label in labels])
        chosen = probabilities.argmax(-1).tolist()
        missing = vectors.isnan().any(-1).tolist()
        frame.insert(0, "label", [None if m else labels[i] for i, m in zip(chosen, missing, strict=True)])
        return frame

    def explain(
        self,
        rows: Rows | Table,
        target: str | None = None,
        *,
        shapley: bool = True,
        base_dir: Path | None = None,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Which input decided each row's prediction. Columns: `predicted`, `probability` (of that class),
        `base` (the prediction with every input missing), `loo_<input>` (how much the probability drops
        without that input) and `shapley_<input>` (Shapley values over inputs: exact up to 4 inputs,
        estimated from 64 seeded input orders above; `frame.attrs["shapley_method"]` says which). A
        regression target is explained in its own units. Removing an input marks it missing, as the
        model saw missing inputs in training."""
        from polyfuse.evaluation.contribution import explain_rows

        self._require("predict")
        return explain_rows(self, self._table(rows, base_dir), target, shapley=shapley, seed=seed)

    def evaluate(self, table: Table) -> dict[str, Any]:
        """Every objective's metrics on a table (targets needed by supervised and label-aware objectives)."""
        return score_objectives(self.model, self._batches(table, True))


def _pooled(output: ModelOutput) -> dict[str, torch.Tensor]:
    return {n: torch.nn.functional.normalize(f.pooled, dim=-1) for n, f in output.features.items()}


def row_embedding(model: Any, aligned: Any, output: ModelOutput) -> torch.Tensor:
    """(B, E) each row's vector, as `Predictor.embed(rows)` returns it: the L2-normalised fused vector,
    or (a model without a fusion) the normalised mean of the row's shared-space vectors."""
    if model.fusion is not None:
        return torch.nn.functional.normalize(output.fused, dim=-1)
    return _mean_present(aligned.embed(output), output.present)


def _mean_present(vectors: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, E) normalised mean of each row's present inputs' vectors (NaN for a row with none)."""
    names = sorted(vectors)
    stacked = torch.stack([vectors[n] for n in names], dim=1)  # (B, M, E)
    mask = torch.stack([present[n] for n in names], dim=1)  # (B, M)
    total = torch.where(mask[..., None], stacked, 0.0).sum(1)
    mean = torch.nn.functional.normalize(total, dim=-1)
    return torch.where(mask.any(1, keepdim=True), mean, float("nan"))


def load(directory: Path | str) -> Predictor:
    """Load a model directory written by `polyfuse train` (offline; no pickle)."""
    return Predictor(directory)
