"""From generated audio features back to a waveform a person can listen to.

The inverse of `audio.audio_features`, step by step (each step undoes one of the forward pass):

    features (F, T)  ─ un-normalise with per-bin levels seen in training (normalize=True loses them) ─▶
    MFCC → log-mel   (pseudo-inverse of the truncated DCT; MFCC keeps fewer coefficients, so this is lossy)
    log-mel → mel power (exp, minus the 1e-6 floor) → linear power (pseudo-inverse of the mel filterbank,
    clamped at 0) → magnitude (K, T) → Griffin-Lim with momentum (Perraudin et al. 2013) → waveform (N,)

Griffin-Lim uses torch.stft / torch.istft with the analysis settings (window, hop, centring), so a
magnitude computed from a real waveform comes back as a waveform with the same spectrum.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import torch

from polyfuse.data.modalities.audio import AudioConfig, _dct_matrix, audio_features, mel_filterbank

LOG_FLOOR = 1e-6  # what audio_features adds before the log


def feature_levels(waveforms: Iterable[npt.NDArray[np.float32]], cfg: AudioConfig) -> torch.Tensor:
    """(2, F): the mean over clips of each feature bin's time-mean and time-std before normalisation —
    the levels `features_to_waveform` puts back. Identity levels (0, 1) when cfg.normalize is off."""
    raw = cfg.model_copy(update={"normalize": False})
    means, stds = [], []
    for wave in waveforms:
        features = audio_features(wave, raw).double()  # (F, T)
        means.append(features.mean(1))
        stds.append(features.std(1, unbiased=False))
    if not cfg.normalize or not means:
        return torch.stack([torch.zeros(cfg.feature_dim), torch.ones(cfg.feature_dim)])
    return torch.stack([torch.stack(means).mean(0), torch.stack(stds).mean(0)]).float()


def features_to_magnitude(features: torch.Tensor, cfg: AudioConfig, levels: torch.Tensor) -> torch.Tensor:
    """(F, T) features as `audio_features` makes them → (n_fft // 2 + 1, T) linear STFT magnitude."""
    x = features.double()
    if cfg.normalize:
        x = x * levels[1].double()[:, None] + levels[0].double()[:, None]
    if cfg.feature == "mfcc":
        x = torch.linalg.pinv(_dct_matrix(cfg.n_mfcc, cfg.n_mels).double()) @ x  # (n_mels, T)
    mel_power = (x.exp() - LOG_FLOOR).clamp(min=0.0)
    bank = mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.effective_f_max).double()
    power: torch.Tensor = (torch.linalg.pinv(bank) @ mel_power).clamp(min=0.0)  # (K, T)
    return power.sqrt().float()


def griffin_lim(
    magnitude: torch.Tensor,
    cfg: AudioConfig,
    iterations: int = 60,
    momentum: float = 0.99,
    seed: int = 0,
) -> torch.Tensor:
    """A waveform (N,) whose STFT magnitude is close to `magnitude` (K, T); N = (T − 1) · hop_length."""
    window = torch.hann_window(cfg.win_length, dtype=torch.float32)
    settings = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window)
    length = max(1, (magnitude.shape[1] - 1) * cfg.hop_length)
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator) * 2 * torch.pi
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        wave = torch.istft(magnitude * angles, center=True, length=length, **settings)  # type: ignore[arg-type]
        rebuilt = torch.stft(wave, center=True, pad_mode="constant", return_complex=True, **settings)  # type: ignore[arg-type]
        angles = rebuilt - previous * (momentum / (1 + momentum))
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    wave = torch.istft(magnitude * angles, center=True, length=length, **settings)  # type: ignore[arg-type]
    return wave


def features_to_waveform(
    features: torch.Tensor, cfg: AudioConfig, levels: torch.Tensor, iterations: int = 60
) -> npt.NDArray[np.float32]:
    """(F, T) features → mono float32 waveform at cfg.sample_rate, peak-normalised to 0.9 (silence stays 0)."""
    wave = griffin_lim(features_to_magnitude(features, cfg, levels), cfg, iterations).numpy()
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return (wave * (0.9 / peak) if peak > 0 else wave).astype(np.float32)
