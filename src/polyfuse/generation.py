"""Generated tensors → what a person can look at or listen to: PIL images, waveforms, table values.

Decoders produce values in the preprocessed space (`models.decoders`); this undoes the preprocessing:
image pixels are un-normalised to 0..255, audio features become a waveform by Griffin-Lim
(`data.modalities.audio_inverse`), numeric columns are un-standardised and category ids become values.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.schema import Modality
from polyfuse.models.decoders import AudioDecoder

GRID_GAP = 2  # pixels between tiles of a grid


def to_media(objective: Any, target: str, raw: torch.Tensor, preprocessor: Preprocessor) -> list[Any]:
    """One generated value per row of `raw` (a decoder's output for `target`)."""
    decoder = objective.decoder(target)
    modality = preprocessor.inputs[target]
    cfg = preprocessor.state.config
    if modality is Modality.IMAGE:
        return [to_image(x, cfg.image.channel_mean(), cfg.image.channel_std()) for x in decoder.mean(raw)]
    if modality is Modality.AUDIO:
        from polyfuse.data.modalities.audio_inverse import features_to_waveform

        assert isinstance(decoder, AudioDecoder)
        levels = objective.audio_levels(target).cpu()
        features, lengths = decoder.mean(raw), decoder.lengths(raw)
        return [
            features_to_waveform(f[:, : int(t)], cfg.audio, levels)
            for f, t in zip(features, lengths, strict=True)
        ]
    values = decoder.mean(raw)
    if modality is Modality.NUMERIC:
        stats = [preprocessor.state.numeric[c] for c in preprocessor.numeric_columns]
        return [
            {
                c: float(v) * s.std + s.mean
                for c, v, s in zip(preprocessor.numeric_columns, row, stats, strict=True)
            }
            for row in values.tolist()
        ]
    vocabs = [preprocessor.state.category[c] for c in preprocessor.category_columns]
    return [
        {
            c: (vocab.values[i - 2] if i >= 2 else None)  # id 1 = a value unseen in training
            for c, i, vocab in zip(preprocessor.category_columns, row, vocabs, strict=True)
        }
        for row in values.tolist()
    ]


def to_image(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Image.Image:
    """(C, H, W) normalised pixels → a PIL image (mode L for one channel, RGB for three)."""
    scale = torch.tensor(std, dtype=x.dtype)[:, None, None]
    shift = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    pixels = ((x * scale + shift).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)  # (C, H, W)
    array = pixels.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


def image_grid(images: list[Image.Image], columns: int | None = None, scale: int = 1) -> Image.Image:
    """Tiles in rows of `columns` (default: a square-ish grid) on a white background."""
    if not images:
        raise ValueError("no images to put in a grid")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    width, height = width * scale, height * scale
    grid = Image.new(
        images[0].mode,
        (columns * (width + GRID_GAP) - GRID_GAP, rows * (height + GRID_GAP) - GRID_GAP),
        255 if images[0].mode == "L" else (255, 255, 255),
    )
    for i, image in enumerate(images):
        tile = image.resize((width, height), Image.Resampling.NEAREST) if scale != 1 else image
        grid.paste(tile, ((i % columns) * (width + GRID_GAP), (i // columns) * (height + GRID_GAP)))
    return grid


def wav_bytes(wave: npt.NDArray[np.float32], sample_rate: int) -> bytes:
    """A 16-bit PCM WAV file of a mono waveform."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wave, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    from polyfuse.atomic import atomic_write

    atomic_write(path, lambda f: f.write(data))


def write_generated(path: Path, values: list[Any], modality: Modality, sample_rate: int) -> list[Path]:
    """Write generated values: images as one PNG/JPEG (a grid when several); audio as one WAV, or
    `stem-<i>.wav` per clip when several. Returns the files written (each atomically)."""
    from polyfuse.atomic import atomic_write_text

    suffix = path.suffix.lower()
    if modality is Modality.IMAGE:
        if suffix not in (".png", ".jpg", ".jpeg"):
            raise ValueError(f"an image is written as .png or .jpg, not {path.name}")
        image = values[0] if len(values) == 1 else image_grid(values)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if suffix == ".png" else "JPEG")
        _write_bytes(path, buffer.getvalue())
        return [path]
    if modality is Modality.AUDIO:
        if suffix != ".wav":
            raise ValueError(f"audio is written as .wav, not {path.name}")
        paths = (
            [path]
            if len(values) == 1
            else [path.with_name(f"{path.stem}-{i}.wav") for i in range(len(values))]
        )
        for p, wave in zip(paths, values, strict=True):
            _write_bytes(p, wav_bytes(wave, sample_rate))
        return paths
    import pandas as pd

    frame = pd.DataFrame(values)
    atomic_write_text(path, frame.to_csv(index=False))
    return [path]
