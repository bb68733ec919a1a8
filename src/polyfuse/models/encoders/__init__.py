"""Encoders by name: `create_encoder("audio.cnn", **kwargs)`, `list_encoders("text.*")`.

Names are "<modality>.<family>"; the registry maps each to its constructor and holds nothing else. Every
encoder is an `nn.Module` satisfying `Encoder`: `forward(ModalityBatch) -> EncoderOutput` with tokens
(B, T, D), token_mask (B, T) and pooled (B, D), D = `output_dim`; `trainable=False` (or `.freeze()`) fixes
its weights and keeps it in eval mode. Defaults per modality: image.cnn, audio.cnn, text.minilm (the
packaged, pretrained all-MiniLM-L6-v2).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from polyfuse.models.encoders.audio_cnn import AudioCNN
from polyfuse.models.encoders.audio_transformer import AudioTransformer
from polyfuse.models.encoders.base import Encoder, EncoderModule
from polyfuse.models.encoders.hf import (
    HFAudioEncoder,
    HFImageEncoder,
    HFTextEncoder,
    PretrainedBackbone,
    minilm,
    pretrained_input,
)
from polyfuse.models.encoders.image_cnn import ImageCNN
from polyfuse.models.encoders.tabular import CategoryEmbedding, NumericMLP
from polyfuse.models.encoders.text_small import TextBiGRU, TextTransformer

ENCODERS: dict[str, Callable[..., EncoderModule]] = {
    "image.cnn": ImageCNN,
    "image.hf": HFImageEncoder,
    "audio.cnn": AudioCNN,
    "audio.transformer": AudioTransformer,
    "audio.hf": HFAudioEncoder,
    "text.transformer": TextTransformer,
    "text.bigru": TextBiGRU,
    "text.hf": HFTextEncoder,
    "text.minilm": minilm,
    "numeric.mlp": NumericMLP,
    "category.embedding": CategoryEmbedding,
}

# The encoder a modality gets when the config names none.
DEFAULT_ENCODERS: dict[str, str] = {
    "image": "image.cnn",
    "audio": "audio.cnn",
    "text": "text.minilm",
    "numeric": "numeric.mlp",
    "category": "category.embedding",
}


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted: list_encoders("audio.*")."""
    return sorted(name for name in ENCODERS if fnmatch.fnmatchcase(name, pattern))


def create_encoder(name: str, **kwargs: Any) -> EncoderModule:
    """Build the encoder registered as `name` with its constructor's keyword arguments.

    Returns an nn.Module that satisfies `Encoder` (typed as EncoderModule so it can go into an
    nn.ModuleDict as it is).
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}'; choose one of: {', '.join(list_encoders())}")
    return ENCODERS[name](**kwargs)


__all__ = [
    "DEFAULT_ENCODERS",
    "ENCODERS",
    "AudioCNN",
    "AudioTransformer",
    "CategoryEmbedding",
    "Encoder",
    "EncoderModule",
    "HFAudioEncoder",
    "HFImageEncoder",
    "HFTextEncoder",
    "ImageCNN",
    "NumericMLP",
    "PretrainedBackbone",
    "TextBiGRU",
    "TextTransformer",
    "create_encoder",
    "list_encoders",
    "pretrained_input",
]
