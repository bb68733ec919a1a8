"""What the `autoencoder` and `vae` objectives share: per-input decoders, likelihood weights, the anomaly
score and its calibrated threshold, scoring, and generation.

Decoded inputs are the image, audio, numeric and category inputs (text inputs can condition a code but are
not rebuilt: that needs a language model). Likelihood weights λ_m scale each input's term; the default,
"balanced", gives every input the weight of the largest one (λ_m = max_n |x_n| / |x_m|, MMVAE's likelihood
scaling), so a 784-pixel image is not drowned by 8,000 audio values. Losses are divided by Σ λ_m |x_m|: the
objective reports nats (or squared error) per modelled value, which keeps its scale near 1 whatever the
inputs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from polyfuse.data.schema import Modality
from polyfuse.models.decoders import AudioDecoder, CategoryDecoder, Decoder, ImageDecoder, NumericDecoder
from polyfuse.objectives.base import ObjectiveContext

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from polyfuse.data.batch import Batch
    from polyfuse.data.preprocess import Preprocessor
    from polyfuse.data.table import Table
    from polyfuse.models.model import ModelOutput

DECODABLE = (Modality.IMAGE, Modality.AUDIO, Modality.NUMERIC, Modality.CATEGORY)
MAX_AUDIO_FRAMES = 512  # frames an audio decoder rebuilds at most; later frames are not modelled
LEVEL_CLIPS = 200  # training clips whose feature levels are averaged for turning features into sound


def choose_inputs(objective: str, context: ObjectiveContext, inputs: list[str] | None) -> list[str]:
    chosen = sorted(inputs) if inputs is not None else list(context.inputs)
    unknown = [n for n in chosen if n not in context.inputs]
    if unknown:
        raise ValueError(
            f"{objective}: unknown input(s) {unknown}; the table's inputs are {list(context.inputs)}"
        )
    if not any(context.inputs[n] in DECODABLE for n in chosen):
        raise ValueError(
            f"{objective}: none of {chosen} can be rebuilt (image, audio, numeric or category inputs are; "
            "text is not)"
        )
    return chosen


def audio_frames(context: ObjectiveContext, requested: int | None) -> int:
    cfg = context.config.data.preprocessing.audio
    if requested is not None:
        if requested < 1:
            raise ValueError(f"audio_frames must be >= 1, got {requested}")
        return requested
    return min(1 + int(cfg.max_seconds * cfg.sample_rate) // cfg.hop_length, MAX_AUDIO_FRAMES)


def build_decoder(
    name: str,
    context: ObjectiveContext,
    latent_dim: int,
    frames: int,
    learn_scale: bool,
    image_likelihood: Literal["gaussian", "laplace"] = "gaussian",
) -> Decoder:
    """The decoder for one input, sized from the fitted preprocessing (or dummy sizes without one)."""
    modality = context.inputs[name]
    cfg = context.config.data.preprocessing
    preprocessor = context.preprocessor
    if modality is Modality.IMAGE:
        return ImageDecoder(
            latent_dim,
            cfg.image.channels,
            tuple(cfg.image.size),  # type: ignore[arg-type]
            learn_scale=learn_scale,
            pixel_mean=cfg.image.channel_mean(),
            pixel_std=cfg.image.channel_std(),
            likelihood=image_likelihood,
        )
    if modality is Modality.AUDIO:
        return AudioDecoder(latent_dim, cfg.audio.feature_dim, frames, learn_scale=learn_scale)
    if modality is Modality.NUMERIC:
        n = len(preprocessor.numeric_columns) if preprocessor else 1
        return NumericDecoder(latent_dim, n, learn_scale=learn_scale)
    sizes = (
        [preprocessor.state.category[c].size for c in preprocessor.category_columns] if preprocessor else [3]
    )
    return CategoryDecoder(latent_dim, sizes)


class ReconstructionBase(nn.Module):
    """Decoders, weights and the anomaly machinery; subclasses say how a row becomes a code."""

    name: ClassVar[str]
    anomaly_threshold: Tensor  # () buffer: NaN until `calibrate` sets it from the validation scores

    def _setup(
        self,
        context: ObjectiveContext,
        inputs: list[str] | None,
        latent_dim: int,
        likelihood_weights: dict[str, float] | None,
        false_alarm_rate: float,
        audio_frames_: int | None,
        learn_scale: bool,
        image_likelihood: Literal["gaussian", "laplace"] = "gaussian",
    ) -> None:
        from polyfuse.models.model import module_key

        if latent_dim < 1:
            raise ValueError(f"{self.name}: latent_dim must be >= 1, got {latent_dim}")
        if not 0.0 < false_alarm_rate < 1.0:
            raise ValueError(f"{self.name}: false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
        self.inputs = choose_inputs(self.name, context, inputs)
        self.decoded = [n for n in self.inputs if context.inputs[n] in DECODABLE]
        self.modalities = {n: context.inputs[n] for n in self.inputs}
        self.keys = {n: module_key(n) for n in self.inputs}
        self.latent_dim = latent_dim
        frames = audio_frames(context, audio_frames_)
        self.decoders = nn.ModuleDict(
            {
                self.keys[n]: build_decoder(n, context, latent_dim, frames, learn_scale, image_likelihood)
                for n in self.decoded
            }
        )
        elements = {n: self.decoder(n).elements() for n in self.decoded}
        weights = dict(likelihood_weights or {})
        unknown = [n for n in weights if n not in self.decoded]
        if unknown:
            raise ValueError(
                f"{self.name}: likelihood_weights for {unknown}, not decoded inputs {self.decoded}"
            )
        if any(not (w >= 0 and math.isfinite(w)) for w in weights.values()):
            raise ValueError(f"{self.name}: likelihood_weights must be finite and >= 0, got {weights}")
        largest = max(elements.values())
        self.weights = {n: float(weights.get(n, largest / elements[n])) for n in self.decoded}
        self.normaliser = max(sum(self.weights[n] * elements[n] for n in self.decoded), 1e-12)
        self.false_alarm_rate = false_alarm_rate
        self.register_buffer("anomaly_threshold", torch.tensor(float("nan")))
        for n in self.decoded:
            if self.modalities[n] is Modality.AUDIO:
                f = context.config.data.preprocessing.audio.feature_dim
                self.register_buffer(f"levels_{self.keys[n]}", torch.stack([torch.zeros(f), torch.ones(f)]))

    def decoder(self, name: str) -> Decoder:
        decoder: Decoder = self.decoders[self.keys[name]]  # type: ignore[assignment]
        return decoder

    def audio_levels(self, name: str) -> Tensor:
        """(2, F) per-bin mean and std of the training audio's features before normalisation."""
        levels: Tensor = getattr(self, f"levels_{self.keys[name]}")
        return levels

    # --- hooks subclasses implement ----------------------------------------------------------------
    def row_loss(self, output: ModelOutput, batch: Batch, present: dict[str, Tensor]) -> Tensor:
        """(B,) the anomaly score: the deterministic loss of each row, from the inputs in `present`."""
        raise NotImplementedError

    def reconstruct(self, output: ModelOutput, present: dict[str, Tensor]) -> dict[str, Tensor]:
        """Decoder outputs for every decoded input from the code of the inputs in `present`."""
        raise NotImplementedError

    def latent(
        self,
        output: ModelOutput | None,
        n: int,
        temperature: float,
        generator: torch.Generator | None,
        target: str | None = None,
    ) -> Tensor:
        """(B, Z) codes to generate `target` from: the rows' present inputs, or n draws from the prior
        (output None)."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------------
    def weighted(self, per_input: dict[str, Tensor]) -> Tensor:
        """Σ_m λ_m · term_m (B,)."""
        return torch.stack([self.weights[n] * per_input[n] for n in self.decoded]).sum(0)

    def generate(
        self,
        output: ModelOutput | None,
        target: str,
        n: int = 1,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Raw decoder output for `target` (see `models.decoders`) from the rows' inputs or the prior."""
        if target not in self.decoded:
            raise ValueError(f"{self.name} cannot generate '{target}'; it rebuilds {self.decoded}")
        z = self.latent(output, n, temperature, generator, target)
        out: Tensor = self.decoder(target)(z)
        return out

    def anomaly_rows(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """anomaly_score (B,) and anomaly (B,) bool (score over the calibrated threshold; False without one).
        Rows with none of the objective's inputs get a NaN score."""
        score = self.row_loss(output, batch, output.present)
        has_any = torch.stack([output.present[n] for n in self.inputs], 1).any(1)
        score = torch.where(has_any, score, float("nan"))
        return {"anomaly_score": score, "anomaly": score > self.anomaly_threshold}

    def step_metrics(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        return {}

    def eval_rows(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """Per row: the anomaly score; per decoded input, the squared error (sum, count) of its
        reconstruction from all present inputs and, with several inputs, from the other inputs only."""
        rows = self.anomaly_rows(output, batch)
        rows.update(self._errors(self.reconstruct(output, output.present), batch, "joint"))
        if len(self.inputs) > 1:
            for name in self.decoded:
                others = {n: p if n != name else torch.zeros_like(p) for n, p in output.present.items()}
                raw = self.reconstruct(output, others)[name]
                cross = self._errors({name: raw}, batch, "from_others", only=name)
                has_other = torch.stack([others[n] for n in self.inputs], 1).any(1)
                rows.update({k: torch.where(has_other, v, 0.0) for k, v in cross.items()})
        return rows

    def _errors(
        self, raw: dict[str, Tensor], batch: Batch, kind: str, only: str | None = None
    ) -> dict[str, Tensor]:
        rows = {}
        for name in [only] if only else self.decoded:
            decoder = self.decoder(name)
            values = batch.inputs[name]
            if isinstance(decoder, AudioDecoder):
                squared, count = decoder.squared_error(raw[name], values)
            elif isinstance(decoder, CategoryDecoder):
                wrong = (decoder.mean(raw[name]) != values.values).float()
                given = (values.values > 0) & values.present[:, None]
                squared, count = (wrong * given).sum(1), given.sum(1).float()
            else:
                squared, count = decoder.distortion(raw[name], values), decoder.counts(values)
            rows[f"{kind}/{name}/error"] = squared
            rows[f"{kind}/{name}/count"] = count
        return rows

    def score(self, rows: dict[str, Tensor]) -> dict[str, Any]:
        """Reconstruction error per input (mean squared error in the preprocessed space; error rate for
        categories), from all inputs and from the others only; mean anomaly score; share of rows flagged."""
        metrics: dict[str, Any] = {}
        for key in sorted(k for k in rows if k.endswith("/error")):
            kind, name, _ = key.split("/")
            count = rows[f"{kind}/{name}/count"].sum()
            if count > 0:
                label = "error_rate" if self.modalities[name] is Modality.CATEGORY else "mse"
                metrics[f"{name}_{label}" + ("" if kind == "joint" else "_from_others")] = float(
                    rows[key].sum() / count
                )
        scores = rows["anomaly_score"]
        scored = scores[~scores.isnan()]
        if len(scored):
            metrics["mean_anomaly_score"] = float(scored.mean())
        threshold = float(self.anomaly_threshold)
        if not math.isnan(threshold) and len(scored):
            metrics["anomaly_threshold"] = threshold
            metrics["flagged_share"] = float((scored > threshold).float().mean())
        return {self.name: metrics}

    def calibrate(self, rows: dict[str, Tensor]) -> None:
        """The anomaly threshold: the (1 − false_alarm_rate) quantile of the validation rows' scores, so
        about that share of normal rows is flagged."""
        scores = rows["anomaly_score"]
        scores = scores[~scores.isnan()]
        if len(scores):
            value = torch.quantile(scores.double(), 1.0 - self.false_alarm_rate)
            self.anomaly_threshold.fill_(float(value))

    def fit_data(self, train: Table, preprocessor: Preprocessor) -> None:
        """For audio inputs: the feature levels of up to LEVEL_CLIPS training clips (to make sound)."""
        from polyfuse.data.errors import MediaError
        from polyfuse.data.media import read_source_bytes, resolve_media
        from polyfuse.data.modalities.audio import decode_audio
        from polyfuse.data.modalities.audio_inverse import feature_levels

        cfg = preprocessor.state.config.audio
        for name in self.decoded:
            if self.modalities[name] is not Modality.AUDIO:
                continue
            waves: list[npt.NDArray[np.float32]] = []
            for cell in train.frame[name].tolist():
                if len(waves) >= LEVEL_CLIPS:
                    break
                try:
                    source = resolve_media(cell, train.base_dir)
                    if source is not None:
                        waves.append(decode_audio(read_source_bytes(source, cfg.max_file_bytes), cfg))
                except MediaError:  # a bad clip is reported by validation, with its row
                    continue
            self.audio_levels(name).copy_(feature_levels(waves, cfg))
