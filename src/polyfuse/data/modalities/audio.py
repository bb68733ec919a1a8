"""Audio: safe decoding to mono at a fixed sample rate, log-mel / MFCC features, and augmentation.

The pipeline for one cell is

    wave = torch.from_numpy(decode_audio(source, cfg))     # float32 (N,), cfg.sample_rate, <= max_seconds
    wave = augment_waveform(wave, cfg.augment, generator)  # training only: gain + noise
    feats = audio_features(wave, cfg)                      # float32 (F, T): F = n_mels or n_mfcc
    feats = spec_augment(feats, cfg.augment, generator)    # training only: time / frequency masks

Decoding treats every file as hostile (docs/research/serving-reliability.md, c.2 A1-A8): header values are
never trusted for allocation (a WAV can claim 4 GB and hold 32 bytes), samples are read in bounded
blocks, and the channel count, sample rate, duration and sample values are all checked. Every failure is a
`MediaError` with a fix.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polyfuse.data.errors import MediaError
from polyfuse.data.media import MediaSource, describe_source, read_source_bytes

# ----------------------------------------------------------------------------------------------------
# Configs (saved as JSON beside the weights, so a model always gets the preprocessing it was trained with)


def _check_range(value: tuple[float, float], name: str) -> tuple[float, float]:
    if not value[0] <= value[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
    return value


class AudioAugmentConfig(BaseModel):
    """Train-time augmentation: waveform gain and noise, then SpecAugment-style masks on the features."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # False makes augment_waveform and spec_augment the identity
    time_masks: int = Field(default=2, ge=0)  # number of time masks per utterance
    max_time_mask_frames: int = Field(default=10, ge=0)  # each time mask is 0..this many frames wide
    freq_masks: int = Field(default=2, ge=0)  # number of frequency masks per utterance
    max_freq_mask_bins: int = Field(default=8, ge=0)  # each frequency mask is 0..this many bins tall
    gain_db: tuple[float, float] = (-6.0, 6.0)  # gain drawn uniformly from this range, in dB
    noise_snr_db: tuple[float, float] = (20.0, 40.0)  # white-noise SNR drawn from this range, in dB
    noise_probability: float = Field(default=0.5, ge=0.0, le=1.0)  # chance that noise is added at all

    @field_validator("gain_db", "noise_snr_db")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_range(value, "range")


class AudioConfig(BaseModel):
    """How an audio cell becomes (F, T) features."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(default=16_000, gt=0)  # Hz; decoded audio is resampled to this
    max_seconds: float = Field(default=10.0, gt=0)  # longer audio is trimmed to its first max_seconds
    min_seconds: float = Field(default=0.0, ge=0)  # shorter audio is refused; 0 refuses only 0 frames
    pad_to_max_seconds: bool = False  # zero-pad every clip to max_seconds; False: collate pads per batch
    feature: Literal["log_mel", "mfcc"] = "log_mel"  # log-mel (F = n_mels) or MFCC (F = n_mfcc)
    n_fft: int = Field(default=512, gt=0)  # FFT size in samples (32 ms at 16 kHz)
    win_length: int = Field(default=400, gt=0)  # Hann window length in samples (25 ms), <= n_fft
    hop_length: int = Field(default=160, gt=0)  # samples between frames (10 ms), <= win_length
    n_mels: int = Field(default=64, gt=0)  # mel filters
    n_mfcc: int = Field(default=20, gt=0)  # cepstral coefficients kept when feature == "mfcc"; <= n_mels
    f_min: float = Field(default=0.0, ge=0)  # Hz, lowest mel filter edge
    f_max: float | None = None  # Hz, highest mel filter edge; None = sample_rate / 2
    normalize: bool = True  # per utterance: zero mean, unit variance over time, for each feature bin
    allowed_sample_rates: tuple[int, int] = (1_000, 192_000)  # Hz; files outside this range are refused
    max_channels: int = Field(default=8, gt=0)  # more channels are refused; fewer are averaged to mono
    max_decode_seconds: float = Field(default=600.0, gt=0)  # files longer than this are refused
    max_file_bytes: int = Field(default=200_000_000, gt=0)  # encoded files larger than this are refused
    augment: AudioAugmentConfig = Field(default_factory=AudioAugmentConfig)

    @property
    def feature_dim(self) -> int:
        """F, the number of feature rows audio_features returns."""
        return self.n_mels if self.feature == "log_mel" else self.n_mfcc

    def n_frames(self, n_samples: int) -> int:
        """T, the number of frames audio_features returns for a clip of n_samples: the centred frames
        (n_fft // 2 zeros on each side) that start inside the clip."""
        return 1 + (n_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length

    @property
    def effective_f_max(self) -> float:
        return self.sample_rate / 2 if self.f_max is None else self.f_max

    @field_validator("allowed_sample_rates")
    @classmethod
    def _check_rates(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"allowed_sample_rates must be (low, high) with 0 < low <= high, got {value}")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> AudioConfig:
        errors = []
        if not self.hop_length <= self.win_length <= self.n_fft:
            errors.append(
                f"need hop_length <= win_length <= n_fft, got hop_length={self.hop_length}, "
                f"win_length={self.win_length}, n_fft={self.n_fft}"
            )
        if self.n_mfcc > self.n_mels:
            errors.append(f"n_mfcc ({self.n_mfcc}) must be <= n_mels ({self.n_mels})")
        if self.f_max is not None and self.f_max > self.sample_rate / 2:
            errors.append(f"f_max ({self.f_max} Hz) must be <= sample_rate / 2 ({self.sample_rate / 2} Hz)")
        if not self.f_min < self.effective_f_max:
            errors.append(f"f_min ({self.f_min} Hz) must be below f_max ({self.effective_f_max} Hz)")
        if self.min_seconds > self.max_seconds:
            errors.append(f"min_seconds ({self.min_seconds}) must be <= max_seconds ({self.max_seconds})")
        if self.max_decode_seconds < self.max_seconds:
            errors.append(
                f"max_decode_seconds ({self.max_decode_seconds}) must be >= max_seconds ({self.max_seconds})"
            )
        if not errors:
            bank = mel_filterbank(self.n_fft, self.n_mels, self.sample_rate, self.f_min, self.effective_f_max)
            empty = (bank.sum(dim=1) <= 0).nonzero().flatten().tolist()
            if empty:
                errors.append(
                    f"mel filters {empty} cover no FFT bin (n_mels={self.n_mels} is too many for n_fft="
                    f"{self.n_fft}); lower n_mels or raise n_fft"
                )
        if errors:
            raise ValueError("; ".join(errors))
        return self


# ----------------------------------------------------------------------------------------------------
# Decoding

_BLOCK_FRAMES = 65_536  # frames read per call: bounds every allocation whatever the header claims
_MAX_ABS_SAMPLE = 1_000.0  # float files are nominally within ±1; 60 dB above that is garbage, not sound


def decode_audio(source: MediaSource, cfg: AudioConfig) -> npt.NDArray[np.float32]:
    """Decode WAV / FLAC / Ogg to mono float32 (N,) at cfg.sample_rate, trimmed to cfg.max_seconds
    (and zero-padded to it when cfg.pad_to_max_seconds). Raises MediaError for anything unusable."""
    data = read_source_bytes(source, cfg.max_file_bytes)
    name = describe_source(source)
    _check_wav_length(data, name)
    try:
        with sf.SoundFile(BytesIO(data)) as stream:
            rate = int(stream.samplerate)
            _check_stream(rate, int(stream.channels), cfg, name)
            _check_declared_duration(int(stream.frames), rate, cfg, name)
            mono = _read_mono(stream, rate, cfg, name)  # (n,) at the file's rate, n <= max_seconds + margin
    except MediaError:
        raise
    except sf.LibsndfileError as e:
        raise MediaError(
            f"{name}: cannot decode audio ({e.error_string})",
            "give a WAV, FLAC or Ogg Vorbis file; re-export it if it is one",
        ) from None
    except (RuntimeError, ValueError, TypeError) as e:
        raise MediaError(
            f"{name}: cannot decode audio ({type(e).__name__}: {e})",
            "give a WAV, FLAC or Ogg Vorbis file; re-export it if it is one",
        ) from None

    if rate != cfg.sample_rate:
        # polyphase resampling with scipy's default Kaiser low-pass (anti-aliasing when downsampling);
        # imported here: scipy.signal takes ~0.5 s to import and most clips need no resampling
        from scipy.signal import resample_poly

        gcd = math.gcd(rate, cfg.sample_rate)
        mono = resample_poly(mono, cfg.sample_rate // gcd, rate // gcd).astype(np.float32)
    max_frames = max(1, round(cfg.max_seconds * cfg.sample_rate))
    mono = mono[:max_frames]
    if cfg.pad_to_max_seconds and len(mono) < max_frames:
        mono = np.pad(mono, (0, max_frames - len(mono)))
    return np.ascontiguousarray(mono, dtype=np.float32)


def _check_wav_length(data: bytes, name: str) -> None:
    """Refuse a WAV whose `data` chunk claims more bytes than the file holds.

    libsndfile quietly clamps such a header to what is there and decodes the rest, so a truncated upload
    (or a header forged to claim 2^31 frames) would pass as a shorter, different sound. Only the chunk
    headers are read: (id: 4 bytes, size: uint32 little-endian), padded to even sizes. Other containers
    are left to the decoder.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset, block_align = 12, 0
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt " and size >= 14 and body + 14 <= len(data):
            (block_align,) = struct.unpack_from("<H", data, body + 12)  # bytes per frame, all channels
        if chunk_id == b"data":
            held = len(data) - body
            if size > held:
                unit = max(block_align, 1)
                raise MediaError(
                    f"{name}: truncated WAV: its header claims {size // unit} frames ({size} bytes of "
                    f"samples) but the file holds {held // unit} ({held} bytes)",
                    "upload the whole file, or re-export it so its header matches its length",
                )
            return
        offset = body + size + (size & 1)


def _check_declared_duration(frames: int, rate: int, cfg: AudioConfig, name: str) -> None:
    """Refuse from the header alone a file that says it is longer than allowed, before decoding it."""
    if frames > cfg.max_decode_seconds * rate:
        raise MediaError(
            f"{name}: the header says the audio lasts {frames / rate:.4g} s, over "
            f"audio.max_decode_seconds = {cfg.max_decode_seconds} s",
            "cut the file, or raise audio.max_decode_seconds",
            "too_large",
        )


def _check_stream(rate: int, channels: int, cfg: AudioConfig, name: str) -> None:
    low, high = cfg.allowed_sample_rates
    if not low <= rate <= high:
        raise MediaError(
            f"{name}: sample rate {rate} Hz is outside the allowed {low}-{high} Hz",
            "resample the file, or widen audio.allowed_sample_rates",
        )
    if not 1 <= channels <= cfg.max_channels:
        raise MediaError(
            f"{name}: audio has {channels} channels; 1 to {cfg.max_channels} are allowed",
            "downmix the file, or raise audio.max_channels",
        )


def _read_mono(stream: sf.SoundFile, rate: int, cfg: AudioConfig, name: str) -> npt.NDArray[np.float32]:
    """Read the whole stream in bounded blocks, averaging channels; keep only what the output needs.

    Reading to the end (up to max_decode_seconds) checks every sample and the real duration; only the first
    max_seconds (plus a margin so resampling has real samples at the cut) are kept in memory.
    """
    limit = math.floor(cfg.max_decode_seconds * rate)  # frames allowed in the file
    keep = math.ceil(cfg.max_seconds * rate) + rate // 100 + 64  # frames worth keeping: output + ~10 ms
    kept: list[npt.NDArray[np.float32]] = []
    total = n_kept = 0
    while True:
        # asking for one frame past the limit is how we learn the file is longer than allowed
        block = stream.read(min(_BLOCK_FRAMES, limit + 1 - total), dtype="float32", always_2d=True)  # (n, ch)
        if block.shape[0] == 0:
            break
        total += block.shape[0]
        if total > limit:
            raise MediaError(
                f"{name}: audio is longer than audio.max_decode_seconds = {cfg.max_decode_seconds} s",
                "cut the file, or raise audio.max_decode_seconds",
                "too_large",
            )
        if not np.isfinite(block).all():
            raise MediaError(f"{name}: the file holds non-finite samples (NaN or Inf)", "re-export the audio")
        if np.abs(block).max() > _MAX_ABS_SAMPLE:
            raise MediaError(
                f"{name}: sample values reach {np.abs(block).max():.3g}, far outside [-1, 1]",
                "re-export the audio with normalised float samples",
            )
        if n_kept < keep:
            kept.append(block[: keep - n_kept].mean(axis=1, dtype=np.float32))  # (n,) downmix
            n_kept += len(kept[-1])
    if total == 0:
        raise MediaError(f"{name}: zero-length audio (0 frames)", "drop the row or give a non-empty file")
    if total < cfg.min_seconds * rate:
        raise MediaError(
            f"{name}: audio lasts {total / rate:.3g} s, under audio.min_seconds = {cfg.min_seconds} s",
            "drop the row, or lower audio.min_seconds",
        )
    return np.concatenate(kept)


# ----------------------------------------------------------------------------------------------------
# Features


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)  # HTK mel scale


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def _mel_filterbank_cached(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> torch.Tensor:
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (K,) bin centres, Hz
    mel_edges = torch.linspace(
        _hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
        _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    edges = _mel_to_hz(mel_edges)  # (n_mels + 2,) Hz: filter m rises on [m, m+1] and falls on [m+1, m+2]
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (bins - left) / (centre - left)  # (n_mels, K)
    falling = (right - bins) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)  # peak 1 at the centre


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular HTK-mel filters (n_mels, n_fft // 2 + 1), peak 1 (no Slaney area normalisation).

    Filter edges are n_mels + 2 points equally spaced in mel between f_min and f_max (None: Nyquist); the
    triangles are evaluated at the FFT bin frequencies. Cached per parameters; returns a fresh copy.
    """
    top = sample_rate / 2 if f_max is None else float(f_max)
    return _mel_filterbank_cached(n_fft, n_mels, sample_rate, float(f_min), top).clone()


@functools.lru_cache(maxsize=8)
def _dct_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """Orthonormal DCT-II, first n_out rows (n_out, n_in): row k = c_k cos(pi k (n + 1/2) / n_in)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    dct = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)  # (n_out, n_in)
    dct[0] /= math.sqrt(2.0)  # c_0 = sqrt(1 / n_in)
    return dct.to(torch.float32)


def audio_features(waveform: npt.NDArray[np.floating[Any]] | torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Mono waveform (N,) at cfg.sample_rate -> float32 (F, T) log-mel (F = n_mels) or MFCC (F = n_mfcc).

    T = cfg.n_frames(N), 1 + N // hop_length for an even n_fft (centred frames, zero-padded at the edges,
    so even one sample gives a frame).
    With cfg.normalize, each row has zero mean and unit variance over time.
    """
    return audio_features_batch([waveform], cfg)[0]


def audio_features_batch(
    waveforms: Sequence[npt.NDArray[np.floating[Any]] | torch.Tensor], cfg: AudioConfig
) -> list[torch.Tensor]:
    """`audio_features` of several clips, computed together: one STFT, one mel projection, one
    normalisation for clips of similar length instead of a dozen small ops per clip.

    The clips are zero-padded to a common length. The STFT pads every clip with zeros at its edges anyway
    (centred frames), so a clip's own frames read the same samples either way: the features equal
    `audio_features` of each clip alone. Clips are sorted by length and grouped so that padding never more
    than doubles a group's samples.
    """
    clips = [torch.as_tensor(w).to(torch.float32) for w in waveforms]
    for x in clips:
        if x.ndim != 1 or x.shape[0] == 0:
            raise ValueError(f"expected a non-empty mono waveform (N,), got shape {tuple(x.shape)}")
    features: list[torch.Tensor] = [torch.empty(0)] * len(clips)
    for group in _similar_lengths([x.shape[0] for x in clips]):
        for i, f in zip(group, _padded_features([clips[i] for i in group], cfg), strict=True):
            features[i] = f
    return features


def _similar_lengths(lengths: Sequence[int]) -> list[list[int]]:
    """Indices sorted by length, split where a clip is more than twice as long as its group's first."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if not groups or lengths[i] > 2 * lengths[groups[-1][0]]:
            groups.append([])
        groups[-1].append(i)
    return groups


def _padded_features(clips: Sequence[torch.Tensor], cfg: AudioConfig) -> list[torch.Tensor]:
    device = clips[0].device
    waves = torch.nn.utils.rnn.pad_sequence(list(clips), batch_first=True)  # (B, N_max)
    window = torch.hann_window(cfg.win_length, dtype=torch.float32, device=device)
    spec = torch.stft(
        waves,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        pad_mode="constant",  # zeros: "reflect" needs N > n_fft / 2, and padding must read as silence
        return_complex=True,
    )  # (B, n_fft // 2 + 1, T_max)
    power = spec.real.square() + spec.imag.square()  # (B, K, T_max)
    bank = _mel_filterbank_cached(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.effective_f_max)
    log_mel = torch.log(bank.to(device) @ power + 1e-6)  # (B, n_mels, T_max); 1e-6 floors silence at -13.8
    # float64 from here: a constant row (silence, one frame) must stay exactly constant through the DCT and
    # the statistics, so that normalising makes it exactly 0 instead of rounding error over a tiny std.
    features = log_mel.double()
    if cfg.feature == "mfcc":
        features = (
            _dct_matrix(cfg.n_mfcc, cfg.n_mels).to(device, torch.float64) @ features
        )  # (B, n_mfcc, T_max)
    frames = [cfg.n_frames(x.shape[0]) for x in clips]  # each clip's own T
    if cfg.normalize:
        # statistics over each clip's own frames, not the padding
        own = torch.arange(features.shape[-1], device=device) < torch.tensor(frames, device=device)[:, None]
        own = own[:, None, :]  # (B, 1, T_max)
        count = own.sum(dim=-1, keepdim=True)  # (B, 1, 1)
        mean = (features * own).sum(dim=-1, keepdim=True) / count  # (B, F, 1)
        centred = (features - mean) * own
        std = (centred.square().sum(dim=-1, keepdim=True) / count).sqrt()  # (B, F, 1), biased as before
        features = centred / std.clamp_min(1e-5)
    features = features.to(torch.float32)
    return [f[:, :n] for f, n in zip(features.unbind(0), frames, strict=True)]


# ----------------------------------------------------------------------------------------------------
# Augmentation


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def augment_waveform(
    waveform: torch.Tensor, cfg: AudioAugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random gain, then (with cfg.noise_probability) white noise at a random SNR. (N,) -> (N,).

    Deterministic given `generator` (CPU); the identity when cfg.enabled is False. Silence gets no noise
    (its SNR is undefined).
    """
    if not cfg.enabled:
        return waveform
    gain = 10.0 ** (_uniform(*cfg.gain_db, generator) / 20.0)
    add_noise = _uniform(0.0, 1.0, generator) < cfg.noise_probability
    snr_db = _uniform(*cfg.noise_snr_db, generator)
    out: torch.Tensor = waveform * gain
    signal_power = float(out.double().square().mean()) if out.numel() else 0.0
    if add_noise and signal_power > 0.0:
        noise_std = math.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
        # drawn on the generator's device (CPU), then moved
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out = out + noise_std * noise.to(out.device)
    return out


def spec_augment(features: torch.Tensor, cfg: AudioAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment masks on (F, T) features: cfg.freq_masks bands of 0..max_freq_mask_bins rows and
    cfg.time_masks spans of 0..max_time_mask_frames columns set to 0 (the mean after normalisation).

    Widths are clamped to the feature size. Returns a new tensor; deterministic given `generator`; the
    identity when cfg.enabled is False. The masks can be drawn before the features exist
    (`draw_spec_masks`, from their shape) and applied after (`apply_spec_masks`).
    """
    if not cfg.enabled:
        return features
    n_bins, n_frames = features.shape
    return apply_spec_masks(features, draw_spec_masks(n_bins, n_frames, cfg, generator))


@dataclass(frozen=True)
class SpecMasks:
    """The [start, stop) spans SpecAugment zeroes in (F, T) features: rows (frequency) and columns (time)."""

    bins: tuple[tuple[int, int], ...]
    frames: tuple[tuple[int, int], ...]


def draw_spec_masks(
    n_bins: int, n_frames: int, cfg: AudioAugmentConfig, generator: torch.Generator
) -> SpecMasks:
    bins = tuple(_random_span(n_bins, cfg.max_freq_mask_bins, generator) for _ in range(cfg.freq_masks))
    frames = tuple(_random_span(n_frames, cfg.max_time_mask_frames, generator) for _ in range(cfg.time_masks))
    return SpecMasks(bins, frames)


def apply_spec_masks(features: torch.Tensor, masks: SpecMasks) -> torch.Tensor:
    """(F, T) -> a new (F, T) with the masks' rows and columns set to 0."""
    out = features.clone()
    for start, stop in masks.bins:
        out[start:stop, :] = 0.0
    for start, stop in masks.frames:
        out[:, start:stop] = 0.0
    return out


def _random_span(length: int, max_width: int, generator: torch.Generator) -> tuple[int, int]:
    """A span [start, stop) inside [0, length) of width uniform in 0..min(max_width, length)."""
    width = int(torch.randint(0, min(max_width, length) + 1, (), generator=generator))
    start = int(torch.randint(0, length - width + 1, (), generator=generator))
    return start, start + width
