"""The model behind the server: request rows → tensors (checked against the limits) → one forward pass
over many requests' rows → each request's slice of the outputs.

Rows are preprocessed exactly as `Predictor` does (same Preprocessor, same collate, same batches of at most
`Predictor.batch_size` rows), except that media strings are only ever base64 data (`allow_paths=False`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from polyfuse.data.batch import Batch
from polyfuse.data.errors import DataError
from polyfuse.data.preprocess import PreprocessingConfig, Preprocessor, Sample
from polyfuse.data.schema import Modality
from polyfuse.evaluation.evaluate import collect
from polyfuse.models.model import ModelOutput
from polyfuse.predict import Predictor, row_embedding
from polyfuse.serve.settings import Limits

Row = dict[str, Any]


@dataclass
class RequestOutputs:
    """One request's share of a forward pass, rows in request order.

    logits:     target → (n, C) supervised head outputs (regression: (n,) standardised); empty when the
                model has no supervised objective
    outputs:    "<objective>:<name>" → (n, ...) every objective's per-row outputs (Objective.infer), e.g.
                "contrastive:embedding/image", "matching:consistency"; for a model that can embed, also
                "embedding" (n, E): the row's vector as `Predictor.embed(rows)` gives it
    present:    input → (n,) bool, False where the row lacks that input
    """

    logits: dict[str, Tensor]
    outputs: dict[str, Tensor]
    present: dict[str, Tensor] = field(default_factory=dict)


def tightened(config: PreprocessingConfig, limits: Limits) -> PreprocessingConfig:
    """The model's preprocessing with the server's limits applied where they are tighter.

    Only limits change (sizes, formats, ranges): every value that shapes a valid input's tensor is kept,
    so an accepted row is preprocessed bit for bit as in training.
    """
    image, audio, text = config.image, config.audio, config.text
    formats = [f for f in image.formats if f in limits.image_formats]
    if not formats:
        raise DataError(
            f"the server's image formats {limits.image_formats} share none with the model's {image.formats}"
        )
    low = max(audio.allowed_sample_rates[0], limits.audio_sample_rates[0])
    high = min(audio.allowed_sample_rates[1], limits.audio_sample_rates[1])
    if low > high:
        raise DataError(
            f"the server's audio sample rates {limits.audio_sample_rates} do not overlap the model's "
            f"{audio.allowed_sample_rates}"
        )
    return config.model_copy(
        update={
            "image": image.model_copy(
                update={
                    "max_pixels": min(image.max_pixels, limits.max_pixels),
                    "max_file_bytes": min(image.max_file_bytes, limits.max_file_bytes),
                    "formats": formats,
                }
            ),
            "audio": audio.model_copy(
                update={
                    "max_file_bytes": min(audio.max_file_bytes, limits.max_file_bytes),
                    "allowed_sample_rates": (low, high),
                    "max_channels": min(audio.max_channels, limits.max_audio_channels),
                    # never below max_seconds: the model reads that much of every clip
                    "max_decode_seconds": max(
                        audio.max_seconds, min(audio.max_decode_seconds, limits.max_audio_seconds)
                    ),
                }
            ),
            "text": text.model_copy(update={"max_chars": min(text.max_chars, limits.max_text_chars)}),
        }
    )


class Engine:
    def __init__(self, model_dir: Path | str, limits: Limits) -> None:
        started = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.predictor = Predictor(self.model_dir)
        state = self.predictor.preprocessor.state
        config = tightened(state.config, limits)
        self.preprocessor = Preprocessor(state.model_copy(update={"config": config}))
        self.limits = limits
        schema = state.table_schema
        # request fields: the training table's input columns, with their modality
        self.columns: dict[str, Modality] = {
            c.name: c.kind for c in schema.columns if isinstance(c.kind, Modality)
        }
        self.specs = self.predictor.specs
        self.info = self.predictor.info
        metrics_path = self.model_dir / "metrics.json"
        self.metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        self.load_seconds = time.perf_counter() - started

    # --- preprocessing (many threads) -------------------------------------------------------------
    def encode(self, rows: list[Row]) -> list[Sample]:
        """Rows → samples as the collate function takes them. DataError lists every bad cell by row."""
        samples, problems = [], []
        for index, row in enumerate(rows):
            try:
                inputs = self.preprocessor.encode_inputs(row, None, allow_base64=True, allow_paths=False)
            except DataError as e:
                problems += [p.at_row(index) for p in e.problems]
                continue
            samples.append({"inputs": inputs, "targets": {}, "index": index})
        if problems:
            raise DataError(problems)
        return samples

    # --- the model (one thread) ---------------------------------------------------------------------
    def forward(self, requests: list[list[Sample]]) -> list[RequestOutputs]:
        """One pass over every request's rows (in chunks of Predictor.batch_size); each request's slice."""
        merged = [s for samples in requests for s in samples]
        size = self.predictor.batch_size
        collate = self.predictor._collate
        batches = (collate(merged[i : i + size]) for i in range(0, len(merged), size))
        model = self.predictor.model

        aligned = self.predictor._aligned()

        def every_output(output: ModelOutput, _: Batch) -> dict[str, Tensor]:
            found = {
                f"{name}:{key}": value
                for name in model.objectives
                for key, value in model.objective(name).infer(output).items()
            }
            found.update({f"present:{n}": p for n, p in output.present.items()})
            if aligned is not None:
                found["embedding"] = row_embedding(model, aligned, output)
            return found

        found = collect(model, batches, every_output)
        out, start = [], 0
        for samples in requests:
            stop = start + len(samples)
            mine = {k: v[start:stop] for k, v in found.items()}
            logits = {k.split(":", 1)[1]: v for k, v in mine.items() if k.startswith("supervised:")}
            present = {k.split(":", 1)[1]: mine.pop(k) for k in list(mine) if k.startswith("present:")}
            out.append(RequestOutputs(logits, mine, present))
            start = stop
        return out

    def can(self, capability: str) -> bool:
        """Whether one of the model's objectives makes `capability` ("predict", "embed", ...) possible."""
        return bool(self.predictor.model.objectives_for(capability))

    def missing(self, capability: str) -> str:
        """Why the model cannot do `capability`, and which objective would let it."""
        try:
            self.predictor._require(capability)
        except DataError as e:
            return e.problems[0].message
        return ""

    def warm_up(self) -> None:
        """One forward pass on a row with every input missing, so the first real request is not slow."""
        self.forward([self.encode([{}])])

    # --- answers ------------------------------------------------------------------------------------
    def predictions(self, outputs: RequestOutputs) -> list[dict[str, Any]]:
        """Per row, per target: the prediction and (classification) the probability of every class.

        The values are those of `Predictor.predict` / `predict_proba`, read straight from the tensors: a
        pandas frame per request cost ~1 ms on the batching thread, which serves every request in turn.
        """
        labels = self.predictor._label_columns(outputs.logits)
        per_target: dict[str, list[dict[str, Any]]] = {}
        for target, spec in self.specs.items():
            values = labels[target]
            if spec.task == "regression":
                per_target[target] = [{"prediction": float(v)} for v in values]
                continue
            classes = [str(c) for c in spec.classes]
            # float32 → Python float, as pandas gives it for predict_proba
            probabilities = self.predictor._probability_tensor(outputs.logits, target).tolist()
            per_target[target] = [
                {
                    "prediction": value
                    if spec.task == "classification"
                    else [v for v in value.split("|") if v],
                    "probabilities": dict(zip(classes, row, strict=True)),
                }
                for value, row in zip(values, probabilities, strict=True)
            ]
        n = len(next(iter(per_target.values()))) if per_target else 0
        return [{t: per_target[t][i] for t in self.specs} for i in range(n)]

    def description(self) -> dict[str, Any]:
        """What GET /v1/model says: fields to send, targets and classes, version, metrics, limits."""
        how = {
            Modality.TEXT: "string",
            Modality.IMAGE: "base64 of the image file's bytes (or a data: URI), or a multipart file part",
            Modality.AUDIO: "base64 of the audio file's bytes (or a data: URI), or a multipart file part",
            Modality.NUMERIC: "number",
            Modality.CATEGORY: "string or integer",
        }
        cfg = self.preprocessor.state.config
        return {
            "inputs": [
                {"name": name, "modality": kind.value, "format": how[kind], "optional": True}
                for name, kind in self.columns.items()
            ],
            "targets": [{"name": t, "task": s.task, "classes": s.classes} for t, s in self.specs.items()],
            "version": {
                "polyfuse": self.info.get("polyfuse_version"),
                "format_version": self.info.get("format_version"),
                "created": self.info.get("created"),
                "parameters": self.info.get("parameters"),
            },
            "metrics": self.metrics,
            "limits": {
                **self.limits.model_dump(),
                "image_formats": cfg.image.formats,
                "max_pixels": cfg.image.max_pixels,
                "audio_sample_rates": list(cfg.audio.allowed_sample_rates),
                "max_audio_channels": cfg.audio.max_channels,
                "max_audio_seconds": cfg.audio.max_decode_seconds,
                "max_text_chars": cfg.text.max_chars,
            },
        }
