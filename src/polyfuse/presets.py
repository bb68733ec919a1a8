"""Named presets: literal numbers for known datasets, used by `polyfuse init` and the benchmarks."""

from __future__ import annotations

from polyfuse.data.modalities.audio import AudioConfig
from polyfuse.data.modalities.image import ImageConfig
from polyfuse.data.preprocess import PreprocessingConfig


def av_digits_preprocessing() -> PreprocessingConfig:
    """MNIST digits (28×28 grey) and FSDD speech (8 kHz, ≤ 2.3 s): keep the native sizes."""
    return PreprocessingConfig(
        image=ImageConfig(mode="L", size=(28, 28), mean=(0.1307,), std=(0.3081,)),
        audio=AudioConfig(
            sample_rate=8000,
            max_seconds=2.0,
            n_fft=256,
            win_length=200,
            hop_length=80,
            n_mels=40,
        ),
    )


PREPROCESSING_PRESETS = {"av-digits": av_digits_preprocessing}


def preprocessing_preset(name: str | None) -> PreprocessingConfig:
    """The named preset, or the defaults for None."""
    if name is None:
        return PreprocessingConfig()
    if name not in PREPROCESSING_PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {sorted(PREPROCESSING_PRESETS)}")
    return PREPROCESSING_PRESETS[name]()
