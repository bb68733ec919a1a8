"""Inputs read by a pretrained Hugging Face encoder get that encoder's own preprocessing.

A backbone was pretrained on inputs made one way: its image processor's resize, crop, mean and std; its
feature extractor's sampling rate and features (the raw normalised waveform for wav2vec2 / HuBERT, an
80/128-bin log-mel of exactly 30 s for Whisper, a time-first fbank for AST); its own tokenizer. Fed
anything else it still runs, and computes garbage. So an `hf` encoder declares a `PretrainedInput` for the
column it reads (see `polyfuse.models.encoders.pretrained_input`), and the preprocessor makes exactly that
input with the processor loaded from the same folder (AutoImageProcessor / AutoFeatureExtractor /
AutoTokenizer), never polyfuse's own image / audio / text settings. The decoding itself stays polyfuse's
hardened decoders (pixel and duration limits, format allowlists); only what follows is the backbone's.

One row's tensor, by family (the collate function pads the last axis of audio, as for log-mels):
  image     float (C, H, W)          the processor's pixel_values
  waveform  float (1, N)             the extractor's input_values (zero mean, unit variance) at its rate
  whisper   float (n_mels, frames)   input_features: 30 s (3000 frames for the released models), padded
  ast       float (n_mels, frames)   input_values transposed to mel-first (the encoder transposes back)
  text      long (T,)                the backbone tokenizer's ids

The processor files are saved with the backbone in the model directory (backbones/<input>/), so a loaded
model preprocesses exactly as in training, offline.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from polyfuse.data.errors import MediaError

Family = Literal["image", "waveform", "whisper", "ast", "text"]
AUDIO_FAMILIES = ("waveform", "whisper", "ast")


class PretrainedInput(BaseModel):
    """What an input's encoder needs: the processor of `source`, used the way `family` says."""

    model_config = ConfigDict(extra="forbid")

    family: Family
    source: str  # a folder with the processor files (or a hub id); "backbones/<key>" inside a model dir


def _local_only(source: str) -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or Path(source).exists()


@functools.lru_cache(maxsize=16)
def load_processor(source: str, family: Family) -> Any:
    """The image processor / feature extractor / tokenizer saved with the backbone at `source`."""
    from polyfuse.data.modalities.text import load_tokenizer

    if family == "text":
        return load_tokenizer(source)
    import transformers
    from transformers.utils import logging as transformers_logging

    logging: Any = transformers_logging  # untyped functions
    auto: Any = transformers.AutoImageProcessor if family == "image" else transformers.AutoFeatureExtractor

    what = "image processor" if family == "image" else "feature extractor"
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "requires torchvision, falling back to the PIL processor": expected here
    try:
        return auto.from_pretrained(source, local_files_only=_local_only(source))
    except (OSError, ValueError) as e:
        raise MediaError(
            f"cannot load the {what} of pretrained encoder '{source}': {e}",
            f"save the backbone's {what} next to its weights (e.g. Auto{'ImageProcessor' if family == 'image' else 'FeatureExtractor'}"
            ".from_pretrained(hub_id).save_pretrained(folder)), or use a folder that has preprocessor_config.json",
        ) from None
    finally:
        logging.set_verbosity(verbosity)


def processor_digest(spec: PretrainedInput) -> dict[str, Any]:
    """The processor's settings, for the feature cache key: a changed crop or rate never hits old entries."""
    processor = load_processor(spec.source, spec.family)
    settings = json.loads(json.dumps(processor.to_dict(), default=str, sort_keys=True))
    settings.pop("processor_class", None)
    return {"family": spec.family, "processor": settings}


def sampling_rate(spec: PretrainedInput) -> int:
    return int(load_processor(spec.source, spec.family).sampling_rate)


def image_pixels(pixels: npt.NDArray[np.uint8], spec: PretrainedInput) -> npt.NDArray[np.float32]:
    """Decoded uint8 RGB (H, W, 3) at its own size -> the processor's pixel_values (3, H', W')."""
    processor = load_processor(spec.source, spec.family)
    out = processor(images=pixels, return_tensors="np")["pixel_values"]  # (1, C, H', W')
    return np.ascontiguousarray(out[0], dtype=np.float32)


def image_fill(spec: PretrainedInput) -> tuple[float, ...]:
    """Per-channel value of a black pixel after the processor (the fill for augment_image)."""
    processor = load_processor(spec.source, spec.family)
    if not getattr(processor, "do_normalize", True):
        return (0.0,)
    mean = np.broadcast_to(np.asarray(processor.image_mean, dtype=np.float64), (3,))
    std = np.broadcast_to(np.asarray(processor.image_std, dtype=np.float64), (3,))
    return tuple(float(v) for v in -mean / std)


def audio_values(wave: npt.NDArray[np.float32], spec: PretrainedInput) -> npt.NDArray[np.float32]:
    """Mono float32 (N,) at the extractor's sampling rate -> (F, T) in the family's layout (module doc)."""
    extractor = load_processor(spec.source, spec.family)
    rate = int(extractor.sampling_rate)
    if spec.family == "waveform":
        out = extractor(wave, sampling_rate=rate, return_tensors="np")["input_values"]  # (1, N)
        return np.ascontiguousarray(out, dtype=np.float32)
    if spec.family == "whisper":
        out = extractor(wave, sampling_rate=rate, return_tensors="np")["input_features"]  # (1, mels, frames)
        return np.ascontiguousarray(out[0], dtype=np.float32)
    out = extractor(wave, sampling_rate=rate, return_tensors="np")["input_values"]  # (1, frames, mels)
    return np.ascontiguousarray(out[0].T, dtype=np.float32)


def feature_rows(spec: PretrainedInput) -> int:
    """F of an audio input's (F, T) tensor: 1 for the waveform, the mel bins otherwise."""
    if spec.family == "waveform":
        return 1
    extractor = load_processor(spec.source, spec.family)
    return int(getattr(extractor, "num_mel_bins", None) or extractor.feature_size)


def save_processor(spec: PretrainedInput, directory: Path) -> None:
    """Write the processor files beside the backbone's weights (save_pretrained's usual layout)."""
    load_processor(spec.source, spec.family).save_pretrained(str(directory))
