"""The multimodal model: encoders per input → fusion (when needed) → objectives (each owns its heads)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from polyfuse.config import RunConfig
from polyfuse.data.batch import Batch
from polyfuse.data.modalities.pretrained import PretrainedInput
from polyfuse.data.modalities.tabular import CategoryVocab
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.schema import Modality
from polyfuse.models.encoders import DEFAULT_ENCODERS, create_encoder, pretrained_input
from polyfuse.models.frozen_cache import FrozenOutputCache
from polyfuse.models.fusion import create_fusion
from polyfuse.models.outputs import EncoderOutput
from polyfuse.objectives.base import Objective, ObjectiveContext


class ModelOutput:
    """What the model computes for a batch before any objective: per-input encoder outputs and presence.

    features[name]: EncoderOutput (tokens (B, T, D_m), token_mask (B, T), pooled (B, D_m)) per input
    present[name]:  bool (B,), False where the row lacks that input
    fused:          (B, D) the fused representation, computed on first use (objectives that do not need it
                    never pay for it); only models built with a fusion have one
    """

    def __init__(
        self,
        features: dict[str, EncoderOutput],
        present: dict[str, Tensor],
        fuse: Callable[..., Tensor] | None,
    ) -> None:
        self.features = features
        self.present = present
        self._fuse = fuse
        self._fused: Tensor | None = None

    @property
    def fused(self) -> Tensor:
        if self._fused is None:
            self._fused = self.fuse(self.features, self.present)
        return self._fused

    def with_present(self, present: dict[str, Tensor]) -> ModelOutput:
        """The same features with other presence masks (e.g. only the inputs to generate from)."""
        return ModelOutput(self.features, present, self._fuse)

    def fuse(
        self,
        features: dict[str, EncoderOutput],
        present: dict[str, Tensor],
        *,
        modality_dropout: bool = True,
    ) -> Tensor:
        """Fuse other features (e.g. with one input swapped across rows, for matching negatives);
        `modality_dropout=False` shows the fusion exactly the inputs given, in training too."""
        if self._fuse is None:
            raise RuntimeError("this model has no fusion: none of its objectives reads a fused vector")
        return self._fuse(features, present, modality_dropout=modality_dropout)


def module_key(name: str) -> str:
    """nn.ModuleDict keys may not contain '.', and columns may: map a column name to a safe key."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class MultimodalModel(nn.Module):
    """Encoders per input → (fusion, when an objective needs one) → objectives, each with its own heads."""

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: nn.Module | None,
        objectives: dict[str, nn.Module],
        weights: dict[str, float] | None = None,
        adapters: dict[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        keys = {name: module_key(name) for name in sorted(encoders)}
        if len(set(keys.values())) != len(keys):
            raise ValueError(f"input names collide once made module-safe: {keys}")
        self.input_keys = keys  # input (column) name → module key
        self.encoders = nn.ModuleDict({keys[n]: encoders[n] for n in sorted(encoders)})
        self.frozen_caches: dict[str, FrozenOutputCache] = {}  # see cache_frozen_encoders
        # bottleneck adapters between a (frozen) encoder and the fusion, by input name
        self.adapters = nn.ModuleDict({keys[n]: a for n, a in sorted((adapters or {}).items())})
        self.fusion = fusion
        self.objectives = nn.ModuleDict(objectives)  # in config order: losses are summed in this order
        self.objective_weights = {name: (weights or {}).get(name, 1.0) for name in objectives}

    def objective(self, name: str) -> Objective:
        objective: Objective = self.objectives[name]  # type: ignore[assignment]
        return objective

    def objectives_for(self, capability: str) -> list[str]:
        """Names of the objectives that make `capability` (e.g. "consistency") possible."""
        return [n for n in self.objectives if capability in self.objective(n).capabilities]

    def cache_frozen_encoders(self, max_rows: int = 100_000) -> list[str]:
        """Reuse frozen encoders' outputs per distinct input row from now on; returns the inputs cached.

        Not part of the state: a loaded model starts without caches.
        """
        self.frozen_caches = {
            key: FrozenOutputCache(max_rows)
            for key, encoder in self.encoders.items()
            if not any(p.requires_grad for p in encoder.parameters())
        }
        return [name for name, key in self.input_keys.items() if key in self.frozen_caches]

    def encode(self, batch: Batch, inputs: list[str] | None = None) -> ModelOutput:
        """Run the encoders (all, or only `inputs`); the fused vector is computed when first read."""
        features = {}
        present = {}
        caches = self.frozen_caches
        for name in inputs if inputs is not None else self.input_keys:
            key = self.input_keys[name]
            values = batch.inputs[name]
            cache = caches.get(key)
            features[name] = cache(self.encoders[key], values) if cache else self.encoders[key](values)
            if key in self.adapters:
                features[name] = self.adapters[key](features[name])
            present[name] = values.present
        return ModelOutput(features, present, self._fuse if self.fusion is not None else None)

    def _fuse(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor], *, modality_dropout: bool
    ) -> Tensor:
        assert self.fusion is not None
        keyed = {self.input_keys[n]: f for n, f in features.items()}
        keyed_present = {self.input_keys[n]: p for n, p in present.items()}
        if modality_dropout:
            return self.fusion(keyed, keyed_present)  # type: ignore[no-any-return]
        with _no_modality_dropout(self.fusion):
            return self.fusion(keyed, keyed_present)  # type: ignore[no-any-return]

    def forward(self, batch: Batch) -> ModelOutput:
        return self.encode(batch)

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """Every objective's named losses, its total as "<objective>_loss", and the weighted "loss"."""
        losses: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name in self.objectives:
            parts = self.objective(name).losses(output, batch)
            objective_total = parts.pop("loss")
            losses.update(parts)
            losses[f"{name}_loss"] = objective_total
            weighted = self.objective_weights[name] * objective_total
            total = weighted if total is None else total + weighted
        assert total is not None, "a model has at least one objective"
        losses["loss"] = total
        return losses


@contextmanager
def _no_modality_dropout(fusion: nn.Module) -> Iterator[None]:
    saved = getattr(fusion, "modality_dropout", 0.0)
    setattr(fusion, "modality_dropout", 0.0)  # noqa: B010 (a float attribute, not a submodule)
    try:
        yield
    finally:
        setattr(fusion, "modality_dropout", saved)  # noqa: B010


# Constructor arguments an encoder may need from the fitted data; each is passed only when the encoder's
# constructor names it, so a new encoder needs no change here.
def _data_kwargs(name: str, modality: Modality, preprocessor: Preprocessor) -> dict[str, Any]:
    cfg = preprocessor.state.config
    known: dict[str, Any] = {}
    if modality is Modality.IMAGE:
        known["in_channels"] = 1 if cfg.image.mode == "L" else 3
    elif modality is Modality.AUDIO:
        known["n_mels"] = cfg.audio.n_mfcc if cfg.audio.feature == "mfcc" else cfg.audio.n_mels
    elif modality is Modality.TEXT:
        known["vocab_size"] = len(preprocessor.tokenizer)
    elif modality is Modality.NUMERIC:
        known["num_features"] = len(preprocessor.numeric_columns)
    elif modality is Modality.CATEGORY:
        vocabs: dict[str, CategoryVocab] = preprocessor.state.category
        known["cardinalities"] = [vocabs[c].size for c in preprocessor.category_columns]
    return known


def encoder_name(config: RunConfig, input_name: str, modality: Modality) -> str:
    chosen = config.encoders.get(input_name)
    return chosen.name if chosen else DEFAULT_ENCODERS[modality.value]


def pretrained_inputs(config: RunConfig, inputs: Mapping[str, Modality]) -> dict[str, PretrainedInput]:
    """Input name → the preprocessing its pretrained encoder carries, for the inputs that have one."""
    specs = {}
    for name, modality in inputs.items():
        chosen = config.encoders.get(name)
        spec = pretrained_input(encoder_name(config, name, modality), chosen.options if chosen else {})
        if spec is not None:
            specs[name] = spec
    return specs


def build_encoder(
    config: RunConfig, input_name: str, modality: Modality, preprocessor: Preprocessor
) -> nn.Module:
    chosen = config.encoders.get(input_name)
    name = encoder_name(config, input_name, modality)
    if not name.startswith(modality.value + "."):
        raise ValueError(
            f"input '{input_name}' is {modality.value}; encoder '{name}' is for another modality"
        )
    options = dict(chosen.options) if chosen else {}
    trainable = chosen.trainable if chosen else True
    from polyfuse.models.encoders import ENCODERS

    accepted = inspect.signature(ENCODERS[name]).parameters if name in ENCODERS else {}
    for key, value in _data_kwargs(name, modality, preprocessor).items():
        if key in accepted and key not in options:
            options[key] = value
    encoder = create_encoder(name, trainable=trainable, **options)
    if chosen is not None and chosen.adapter is not None:
        from polyfuse.models.adapters import apply_adapter

        apply_adapter(encoder, chosen.adapter)
    return encoder


def build_model(config: RunConfig, preprocessor: Preprocessor) -> MultimodalModel:
    """Encoders for every input, the configured fusion over them (when an objective reads a fused
    vector), and the configured objectives with their heads."""
    from polyfuse.objectives import OBJECTIVES, create_objective

    torch.manual_seed(config.training.seed)  # the same config always starts from the same weights
    encoders = {
        name: build_encoder(config, name, modality, preprocessor)
        for name, modality in preprocessor.inputs.items()
    }
    keys = {name: module_key(name) for name in encoders}
    dims = {n: int(e.output_dim) for n, e in encoders.items()}  # type: ignore[arg-type]
    needs_fusion = any(
        getattr(OBJECTIVES[o.name], "needs_fusion", True) for o in config.objectives if o.name in OBJECTIVES
    )
    fusion = (
        create_fusion(
            config.fusion.name,
            {keys[n]: d for n, d in dims.items()},
            config.fusion.output_dim,
            modality_dropout=config.fusion.modality_dropout,
            **config.fusion.options,
        )
        if needs_fusion
        else None
    )
    context = ObjectiveContext(
        inputs=dict(preprocessor.inputs),
        input_dims=dims,
        fused_dim=config.fusion.output_dim,
        targets=dict(preprocessor.state.targets),
        config=config,
        preprocessor=preprocessor,
    )
    objectives = {o.name: create_objective(o.name, context, **o.options) for o in config.objectives}
    if not any(getattr(o, "needs_fusion", True) for o in objectives.values()):
        # an objective class that may read the fused vector was configured not to (matching's pairwise
        # head): drop the fusion rather than carry untrained weights. It was still built above, so
        # the random draws, and with them every other module's initial weights, do not depend on this.
        fusion = None
    weights = {o.name: o.weight for o in config.objectives}
    adapters = {}
    for name, dim in dims.items():
        chosen = config.encoders.get(name)
        if chosen is not None and chosen.adapter is not None and chosen.adapter.method == "bottleneck":
            from polyfuse.models.adapters import BottleneckAdapter

            adapters[name] = BottleneckAdapter(dim, chosen.adapter.bottleneck_dim)
    return MultimodalModel(encoders, fusion, objectives, weights, adapters)  # type: ignore[arg-type]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
