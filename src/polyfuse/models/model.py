"""The multimodal model: encoders per input → fusion → one head per target (+ optional auxiliary heads)."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from polyfuse.config import RunConfig
from polyfuse.data.batch import Batch
from polyfuse.data.modalities.tabular import CategoryVocab
from polyfuse.data.preprocess import Preprocessor, TargetSpec
from polyfuse.data.schema import Modality
from polyfuse.models.encoders import DEFAULT_ENCODERS, create_encoder
from polyfuse.models.frozen_cache import FrozenOutputCache
from polyfuse.models.fusion import create_fusion
from polyfuse.models.heads import TaskHead
from polyfuse.models.outputs import EncoderOutput


@dataclass
class ModelOutput:
    logits: dict[str, Tensor]  # target → (B, C) / (B, L) logits, or (B,) standardised regression values
    fused: Tensor  # (B, D) the fused representation
    embeddings: dict[str, Tensor]  # input name → pooled encoder output (B, D_m)
    aux_logits: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # input → target → logits
    aux_present: dict[str, Tensor] = field(default_factory=dict)  # input → (B,) bool: rows that have it


def module_key(name: str) -> str:
    """nn.ModuleDict keys may not contain '.', and columns may: map a column name to a safe key."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class MultimodalModel(nn.Module):
    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: nn.Module,
        heads: dict[str, nn.Module],
        aux_heads: dict[str, dict[str, nn.Module]] | None = None,
    ) -> None:
        super().__init__()
        keys = {name: module_key(name) for name in sorted(encoders)}
        if len(set(keys.values())) != len(keys):
            raise ValueError(f"input names collide once made module-safe: {keys}")
        self.input_keys = keys  # input (column) name → module key
        self.encoders = nn.ModuleDict({keys[n]: encoders[n] for n in sorted(encoders)})
        self.frozen_caches: dict[str, FrozenOutputCache] = {}  # see cache_frozen_encoders
        self.fusion = fusion
        self.target_keys = {name: module_key(name) for name in sorted(heads)}
        self.heads = nn.ModuleDict({self.target_keys[n]: heads[n] for n in sorted(heads)})
        self.aux_heads = nn.ModuleDict(
            {
                keys[i]: nn.ModuleDict({self.target_keys[t]: h for t, h in per_target.items()})
                for i, per_target in (aux_heads or {}).items()
            }
        )

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

    def encode(self, batch: Batch) -> tuple[dict[str, EncoderOutput], dict[str, Tensor]]:
        """Per-input encoder outputs and presence masks, keyed by module key."""
        features = {}
        present = {}
        caches = self.frozen_caches
        for name, key in self.input_keys.items():
            inputs = batch.inputs[name]
            cache = caches.get(key)
            features[key] = cache(self.encoders[key], inputs) if cache else self.encoders[key](inputs)
            present[key] = inputs.present
        return features, present

    def forward(self, batch: Batch) -> ModelOutput:
        features, present = self.encode(batch)
        fused = self.fusion(features, present)  # (B, D)
        logits = {t: self.heads[k](fused) for t, k in self.target_keys.items()}
        embeddings = {name: features[key].pooled for name, key in self.input_keys.items()}
        aux = {}
        aux_present = {}
        for name, key in self.input_keys.items():
            if key in self.aux_heads:
                pooled = features[key].pooled
                per_target: nn.ModuleDict = self.aux_heads[key]  # type: ignore[assignment]
                aux[name] = {t: per_target[k](pooled) for t, k in self.target_keys.items()}
                aux_present[name] = present[key]
        return ModelOutput(logits, fused, embeddings, aux, aux_present)


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
    return create_encoder(name, trainable=trainable, **options)


def build_model(config: RunConfig, preprocessor: Preprocessor) -> MultimodalModel:
    """Encoders for every input, the configured fusion over them, and a head per target."""
    torch.manual_seed(config.training.seed)  # the same config always starts from the same weights
    encoders = {
        name: build_encoder(config, name, modality, preprocessor)
        for name, modality in preprocessor.inputs.items()
    }
    keys = {name: module_key(name) for name in encoders}
    fusion = create_fusion(
        config.fusion.name,
        {keys[n]: int(e.output_dim) for n, e in encoders.items()},  # type: ignore[arg-type]
        config.fusion.output_dim,
        modality_dropout=config.fusion.modality_dropout,
        **config.fusion.options,
    )
    specs: dict[str, TargetSpec] = preprocessor.state.targets
    heads: dict[str, nn.Module] = {
        t: TaskHead(config.fusion.output_dim, spec, config.head(t).hidden_dim, config.head(t).dropout)
        for t, spec in specs.items()
    }
    aux: dict[str, dict[str, nn.Module]] = {}
    if config.training.aux_loss_weight > 0 and len(encoders) > 1:
        aux = {
            name: {t: TaskHead(int(e.output_dim), spec, 0, 0.0) for t, spec in specs.items()}  # type: ignore[arg-type]
            for name, e in encoders.items()
        }
    return MultimodalModel(encoders, fusion, heads, aux)  # type: ignore[arg-type]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
