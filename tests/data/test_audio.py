"""Audio decoding (hostile and unusual files), features and augmentation."""

from __future__ import annotations

import math
import struct
import tracemalloc
from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
import torch
from pydantic import ValidationError

from polyfuse.data.errors import MediaError
from polyfuse.data.modalities.audio import (
    AudioAugmentConfig,
    AudioConfig,
    audio_features,
    audio_features_batch,
    augment_waveform,
    decode_audio,
    mel_filterbank,
    spec_augment,
)


def encode(samples: npt.NDArray[np.float64], rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> npt.NDArray[np.float64]:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def dominant_hz(wave: npt.NDArray[np.float32], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spectrum) * rate / len(wave))


# ---------------------------------------------------------------------------------------------------
# Decoding


def test_resamples_8k_pcm16_to_16k_and_keeps_the_tone(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    path.write_bytes(encode(sine(440, 1.0, 8000), 8000))
    wave = decode_audio(path, AudioConfig())
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    assert abs(dominant_hz(wave, 16000) - 440) <= 2
    assert 0.45 < np.abs(wave[1000:-1000]).max() < 0.55  # amplitude survives the resampling filter


def test_flac_decodes_like_wav() -> None:
    tone = sine(1000, 0.25, 16000)
    wav, flac = (
        decode_audio(encode(tone, 16000), AudioConfig()),
        decode_audio(encode(tone, 16000, "FLAC"), AudioConfig()),
    )
    assert np.allclose(wav, flac, atol=1.5 / 32768)  # both lossless PCM-16 (encoders may round differently)


def test_stereo_is_averaged_to_mono() -> None:
    stereo = np.stack([np.full(1600, 0.5), np.full(1600, 0.1)], axis=1)  # (frames, channels)
    wave = decode_audio(encode(stereo, 16000, subtype="FLOAT"), AudioConfig())
    assert wave.shape == (1600,)
    assert np.allclose(wave, 0.3, atol=1e-6)


def test_trims_to_max_seconds_and_pads_when_asked() -> None:
    long = encode(sine(300, 3.0, 16000), 16000)
    assert decode_audio(long, AudioConfig(max_seconds=1.0)).shape == (16000,)

    short = encode(sine(300, 0.5, 16000), 16000)
    assert decode_audio(short, AudioConfig(max_seconds=1.0)).shape == (8000,)
    padded = decode_audio(short, AudioConfig(max_seconds=1.0, pad_to_max_seconds=True))
    assert padded.shape == (16000,)
    assert np.all(padded[8000:] == 0) and np.abs(padded[:8000]).max() > 0.4


def test_trimming_after_resampling_matches_the_untrimmed_signal() -> None:
    """The decoder keeps only ~max_seconds of a long file; the kept part must equal a full decode's start."""
    data = encode(sine(440, 3.0, 22050), 22050)
    full = decode_audio(data, AudioConfig(max_seconds=3.0))
    trimmed = decode_audio(data, AudioConfig(max_seconds=1.0))
    assert trimmed.shape == (16000,)
    assert np.allclose(trimmed, full[:16000], atol=1e-4)


def test_zero_frames_is_refused_and_one_frame_works() -> None:
    with pytest.raises(MediaError, match="zero-length"):
        decode_audio(encode(np.zeros(0), 16000), AudioConfig())
    one = decode_audio(encode(np.full(1, 0.5), 16000), AudioConfig())
    assert one.shape == (1,)
    features = audio_features(one, AudioConfig())
    assert features.shape == (64, 1) and torch.isfinite(features).all()
    assert decode_audio(encode(np.full(1, 0.5), 8000), AudioConfig()).shape[0] >= 1


def test_min_seconds() -> None:
    with pytest.raises(MediaError, match="min_seconds"):
        decode_audio(encode(np.zeros(800), 16000), AudioConfig(min_seconds=0.1))
    assert decode_audio(encode(np.zeros(1600), 16000), AudioConfig(min_seconds=0.1)).shape == (1600,)


def test_data_chunk_claiming_4gb_is_refused_as_truncated_without_allocating() -> None:
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)  # PCM, mono, 16 kHz, 16-bit
    samples = (np.arange(16, dtype="<i2") * 1000).tobytes()  # 32 bytes
    wav = (
        b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", 0xFFFFFFF0) + samples
    )  # fmt: skip
    tracemalloc.start()
    try:
        # libsndfile alone would clamp the header and return the 16 frames as if that were the sound
        with pytest.raises(MediaError, match=r"truncated WAV: its header claims 2147483640 frames") as info:
            decode_audio(wav, AudioConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # numpy allocations are traced; a header-sized buffer would be gigabytes
    assert "holds 16 (32 bytes)" in info.value.message
    assert info.value.kind == "invalid"


def test_wav_cut_short_in_transit_is_refused_but_a_whole_one_with_trailing_chunks_is_not() -> None:
    whole = encode(sine(440, 0.1, 16000), 16000)
    with pytest.raises(MediaError, match="truncated WAV"):
        decode_audio(whole[:-10], AudioConfig())
    # a LIST chunk after the samples (as many editors write) is not mistaken for a truncation
    tagged = whole + b"LIST" + struct.pack("<I", 4) + b"INFO"
    assert np.array_equal(decode_audio(tagged, AudioConfig()), decode_audio(whole, AudioConfig()))


def test_header_claiming_more_than_the_duration_limit_is_refused_before_decoding() -> None:
    wav = encode(sine(440, 2.0, 8000), 8000)
    with pytest.raises(MediaError, match=r"header says the audio lasts 2 s") as info:
        decode_audio(wav, AudioConfig(max_seconds=1.0, max_decode_seconds=1.5))
    assert info.value.kind == "too_large"


def test_truncated_header_and_garbage_are_refused() -> None:
    wav = encode(sine(440, 0.1, 16000), 16000)
    with pytest.raises(MediaError, match="cannot decode audio"):
        decode_audio(wav[:20], AudioConfig())
    with pytest.raises(MediaError, match="cannot decode audio"):
        decode_audio(b"definitely not audio" * 5, AudioConfig())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not found"):
        decode_audio(tmp_path / "missing.wav", AudioConfig())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(bad: float) -> None:
    samples = np.zeros(100)
    samples[50] = bad
    with pytest.raises(MediaError, match="non-finite samples"):
        decode_audio(encode(samples, 16000, subtype="FLOAT"), AudioConfig())


def test_absurd_float_samples_are_refused() -> None:
    samples = np.zeros(100)
    samples[10] = 1e30  # finite, but its power overflows float32 features
    with pytest.raises(MediaError, match="far outside"):
        decode_audio(encode(samples, 16000, subtype="FLOAT"), AudioConfig())


def test_too_many_channels() -> None:
    with pytest.raises(MediaError, match="1024 channels"):
        decode_audio(encode(np.zeros((4, 1024)), 16000), AudioConfig())
    assert decode_audio(encode(np.zeros((4, 1024)), 16000), AudioConfig(max_channels=1024)).shape == (4,)


@pytest.mark.parametrize("rate", [500, 768_000])
def test_sample_rate_outside_range(rate: int) -> None:
    with pytest.raises(MediaError, match=f"sample rate {rate} Hz"):
        decode_audio(encode(np.zeros(100), rate), AudioConfig())


def test_duration_over_max_decode_seconds() -> None:
    cfg = AudioConfig(max_seconds=1.0, max_decode_seconds=2.0)
    assert decode_audio(encode(np.zeros(16000), 8000), cfg).shape == (16000,)  # exactly 2 s is allowed
    with pytest.raises(MediaError, match="max_decode_seconds"):
        decode_audio(encode(np.zeros(16001), 8000), cfg)


# ---------------------------------------------------------------------------------------------------
# Config


def test_config_round_trips_and_validates() -> None:
    cfg = AudioConfig(sample_rate=22050, feature="mfcc", n_mfcc=13, f_max=8000.0, augment={"time_masks": 1})
    assert AudioConfig.model_validate(cfg.model_dump()) == cfg
    assert AudioConfig.model_validate_json(cfg.model_dump_json()) == cfg

    with pytest.raises(ValidationError, match="hop_length <= win_length <= n_fft"):
        AudioConfig(hop_length=500)
    with pytest.raises(ValidationError, match="f_max"):
        AudioConfig(f_max=9000.0)
    with pytest.raises(ValidationError, match="n_mfcc"):
        AudioConfig(n_mfcc=80)
    with pytest.raises(ValidationError, match="cover no FFT bin"):
        AudioConfig(n_fft=64, win_length=64, hop_length=32, n_mels=64)
    with pytest.raises(ValidationError):
        AudioConfig.model_validate({"sample_rat": 8000})  # typo: unknown keys are refused


# ---------------------------------------------------------------------------------------------------
# Features


def test_mel_filterbank_shape_and_order() -> None:
    bank = mel_filterbank(512, 64, 16000)
    assert bank.shape == (64, 257)
    assert (bank.sum(dim=1) > 0).all() and bank.max() <= 1.0 + 1e-6
    bins = torch.linspace(0, 8000, 257)
    centroids = (bank * bins).sum(dim=1) / bank.sum(dim=1)
    assert (centroids.diff() > 0).all()  # filters rise in frequency
    assert (bank.argmax(dim=1).diff() >= 0).all()
    high = mel_filterbank(512, 64, 16000, f_min=1000.0, f_max=4000.0)
    assert high[:, bins < 990].sum() == 0 and high[:, bins > 4010].sum() == 0


def test_log_mel_shape() -> None:
    cfg = AudioConfig()
    n = 16037
    features = audio_features(np.random.default_rng(0).standard_normal(n).astype(np.float32), cfg)
    assert features.shape == (64, 1 + n // 160) and features.dtype == torch.float32


def test_one_khz_tone_peaks_in_the_mel_bin_holding_1khz() -> None:
    cfg = AudioConfig(normalize=False)
    features = audio_features(sine(1000, 0.5, 16000).astype(np.float32), cfg)
    bank = mel_filterbank(512, 64, 16000)
    bin_1khz = round(1000 / (16000 / 512))  # FFT bin 32
    assert int(features.mean(dim=1).argmax()) == int(bank[:, bin_1khz].argmax())

    # and that filter's centroid is within one filter spacing of 1 kHz on the HTK mel scale
    def mel(hz: float) -> float:
        return 2595 * math.log10(1 + hz / 700)

    peak = int(features.mean(dim=1).argmax())
    spacing = mel(8000) / 65
    assert abs((peak + 1) * spacing - mel(1000)) < spacing


def test_mfcc_is_an_orthonormal_dct_of_the_log_mel() -> None:
    wave = np.random.default_rng(1).standard_normal(4000).astype(np.float32)
    log_mel = audio_features(wave, AudioConfig(normalize=False))
    mfcc = audio_features(wave, AudioConfig(normalize=False, feature="mfcc"))
    assert mfcc.shape == (20, log_mel.shape[1])
    assert torch.allclose(mfcc[0], log_mel.sum(dim=0) / math.sqrt(64), atol=1e-3)  # c0 = sum / sqrt(N)
    full = audio_features(wave, AudioConfig(normalize=False, feature="mfcc", n_mfcc=64))
    assert torch.allclose(full.norm(dim=0), log_mel.norm(dim=0), rtol=1e-4)  # orthonormal keeps norms


def test_per_utterance_normalisation() -> None:
    wave = sine(700, 1.0, 16000) * np.linspace(0, 1, 16000) + 0.01 * np.random.default_rng(2).standard_normal(
        16000
    )
    features = audio_features(torch.tensor(wave, dtype=torch.float32), AudioConfig())
    assert torch.allclose(features.mean(dim=1), torch.zeros(64), atol=1e-4)
    assert torch.allclose(features.std(dim=1, unbiased=False), torch.ones(64), atol=1e-3)
    silent = audio_features(np.zeros(1600, np.float32), AudioConfig())
    assert torch.equal(silent, torch.zeros_like(silent))  # constant rows: std guarded, no NaN


@pytest.mark.parametrize(
    "cfg",
    [
        AudioConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=40),
        AudioConfig(sample_rate=8000, n_fft=255, win_length=200, hop_length=80, n_mels=32),  # odd n_fft
        AudioConfig(feature="mfcc"),
        AudioConfig(normalize=False),
    ],
)
def test_clips_computed_together_equal_each_clip_alone(cfg: AudioConfig) -> None:
    """One STFT over zero-padded clips of mixed lengths (split into groups of similar length) gives each
    clip the features it gets alone, with cfg.n_frames(N) frames."""
    rng = np.random.default_rng(0)
    lengths = [1, 2, 129, 256, 257, 3000, 3100, 3999, 4000, 20000]
    waves = [torch.tensor(rng.standard_normal(n).astype(np.float32)) for n in lengths] + [torch.zeros(1600)]
    together = audio_features_batch(waves, cfg)
    for wave, features in zip(waves, together, strict=True):
        alone = audio_features(wave, cfg)
        assert features.shape == alone.shape == (cfg.feature_dim, cfg.n_frames(len(wave)))
        torch.testing.assert_close(features, alone, atol=1e-5, rtol=0)
    if cfg.normalize:
        assert together[-1].abs().max() < 1e-6  # silence: every row constant, normalised to 0


def test_mfcc_of_silence_is_zero() -> None:
    """A constant log-mel stays constant through the DCT (float64), so normalising gives 0, not float32
    rounding error divided by the clamped std (it gave values up to 0.3)."""
    silent = audio_features(np.zeros(1600, np.float32), AudioConfig(feature="mfcc"))
    assert silent.abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------------
# Augmentation


def test_spec_augment_masks_whole_rows_and_columns_by_seed() -> None:
    features = torch.randn(64, 100) + 10.0  # no natural zeros
    original = features.clone()
    cfg = AudioAugmentConfig()

    def run(seed: int) -> torch.Tensor:
        return spec_augment(features, cfg, torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    masked_any = False
    for seed in range(5):
        out = run(seed)
        zero = out == 0
        rows, cols = zero.all(dim=1), zero.all(dim=0)
        assert torch.equal(zero, rows[:, None] | cols[None, :])  # zeros only as full bands / spans
        assert rows.sum() <= 2 * 8 and cols.sum() <= 2 * 10
        assert torch.equal(out[~zero], features[~zero])
        masked_any |= bool(zero.any())
    assert masked_any
    assert torch.equal(features, original)  # the input is not modified in place

    tiny = torch.ones(3, 2)  # masks wider than the features are clamped
    big = AudioAugmentConfig(max_freq_mask_bins=50, max_time_mask_frames=50)
    assert spec_augment(tiny, big, torch.Generator().manual_seed(0)).shape == (3, 2)
    assert spec_augment(features, AudioAugmentConfig(enabled=False), torch.Generator()) is features


def test_augment_waveform_gain_noise_and_determinism() -> None:
    wave = torch.tensor(sine(440, 1.0, 16000), dtype=torch.float32)
    gain_only = AudioAugmentConfig(noise_probability=0.0)
    for seed in range(5):
        out = augment_waveform(wave, gain_only, torch.Generator().manual_seed(seed))
        ratio = (out[100] / wave[100]).item()
        assert torch.allclose(out, wave * ratio, rtol=1e-5)
        assert 10 ** (-6 / 20) - 1e-6 <= ratio <= 10 ** (6 / 20) + 1e-6

    noise_20db = AudioAugmentConfig(gain_db=(0, 0), noise_snr_db=(20, 20), noise_probability=1.0)
    out = augment_waveform(wave, noise_20db, torch.Generator().manual_seed(0))
    snr = 10 * math.log10(wave.square().mean().item() / (out - wave).square().mean().item())
    assert abs(snr - 20) < 0.5

    cfg = AudioAugmentConfig()
    a = augment_waveform(wave, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, augment_waveform(wave, cfg, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment_waveform(wave, cfg, torch.Generator().manual_seed(4)))
    assert augment_waveform(wave, AudioAugmentConfig(enabled=False), torch.Generator()) is wave
    silence = torch.zeros(100)
    assert torch.equal(augment_waveform(silence, noise_20db, torch.Generator().manual_seed(0)), silence)
