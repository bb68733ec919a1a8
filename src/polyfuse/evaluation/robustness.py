"""Robustness curves: the metric over 11 severity levels (0, 0.1, …, 1) per input and noise family.

Noise is applied to the table's cells (the decoded picture, the waveform, the words, the numbers), before
polyfuse's own preprocessing, as a degraded sensor or a sloppy form would. Severity s means:

  image  gaussian_noise  pixels (in [0, 1]) + N(0, s²), clipped
         occlusion       a black square covering a share s of the picture, at a random place
         blur            Gaussian blur of radius s · max(H, W) / 8 pixels
  audio  white_noise     white noise at SNR 40 − 50·s dB (35 dB at 0.1, −10 dB at 1); none at 0
         time_mask       a random contiguous share s of the samples set to silence
  text   token_dropout   each whitespace-separated token dropped with probability s
         typos           each word, with probability s, gets one typo (swap, drop, double or replace a letter)
  numeric gaussian_noise each value + N(0, (s · the column's training std)²)
  every input  removal   the input missing in a share s of the rows (round(s · N) rows, at random)

Each point is seeded from (seed, input, family, level), so a curve is the same on every run. The area under
a curve is the trapezoid rule over s ∈ [0, 1] (MultiBench's relative robustness, without its normalisation
against other methods' stored curves, so it can be computed for any table).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
from PIL import Image, ImageFilter

from polyfuse.data.media import is_missing, read_source_bytes, resolve_media
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.schema import Modality
from polyfuse.data.table import Table
from polyfuse.evaluation.tables import (
    PRIMARY_METRIC,
    default_target,
    input_columns,
    with_frame,
    without_input,
)

if TYPE_CHECKING:
    from polyfuse.evaluation.late_fusion import LateFusionEnsemble
    from polyfuse.predict import Predictor

    # a loaded model, or several voting as one: what `robustness_curves` scores
    Scorer = Predictor | LateFusionEnsemble

SEVERITIES = tuple(round(k / 10, 1) for k in range(11))
FAMILIES: dict[Modality, tuple[str, ...]] = {
    Modality.IMAGE: ("gaussian_noise", "occlusion", "blur", "removal"),
    Modality.AUDIO: ("white_noise", "time_mask", "removal"),
    Modality.TEXT: ("token_dropout", "typos", "removal"),
    Modality.NUMERIC: ("gaussian_noise", "removal"),
    Modality.CATEGORY: ("removal",),
}
Rng = np.random.Generator


def snr_db(severity: float) -> float:
    return 40.0 - 50.0 * severity


# --- one cell ---------------------------------------------------------------------------------------
def noisy_image(pixels: npt.NDArray[np.uint8], family: str, s: float, rng: Rng) -> npt.NDArray[np.uint8]:
    """uint8 (H, W) or (H, W, C) → the same shape, degraded."""
    if family == "gaussian_noise":
        x = pixels.astype(np.float64) / 255.0 + rng.normal(0.0, s, size=pixels.shape)
        return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    height, width = pixels.shape[:2]
    if family == "occlusion":
        h, w = round(np.sqrt(s) * height), round(np.sqrt(s) * width)
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out = pixels.copy()
        out[top : top + h, left : left + w] = 0
        return out
    if family == "blur":
        image = Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(s * max(height, width) / 8)))
        return blurred.reshape(pixels.shape)
    raise ValueError(f"unknown image noise {family!r}")


def noisy_wave(wave: npt.NDArray[np.float64], family: str, s: float, rng: Rng) -> npt.NDArray[np.float64]:
    """(N,) samples → (N,) degraded."""
    if family == "white_noise":
        if s == 0:
            return wave
        rms = float(np.sqrt(np.mean(wave**2))) if len(wave) else 0.0
        return wave + rng.normal(0.0, rms / 10 ** (snr_db(s) / 20), size=wave.shape)
    if family == "time_mask":
        span = round(s * len(wave))
        start = int(rng.integers(0, len(wave) - span + 1))
        out = wave.copy()
        out[start : start + span] = 0.0
        return out
    raise ValueError(f"unknown audio noise {family!r}")


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def noisy_text(text: str, family: str, s: float, rng: Rng) -> str:
    words = text.split()
    if family == "token_dropout":
        return " ".join(w for w in words if rng.random() >= s)
    if family == "typos":
        return " ".join(_typo(w, rng) if rng.random() < s else w for w in words)
    raise ValueError(f"unknown text noise {family!r}")


def _typo(word: str, rng: Rng) -> str:
    i = int(rng.integers(0, len(word)))
    kind = int(rng.integers(0, 4))
    if kind == 0 and len(word) > 1:  # swap two neighbouring letters
        i = min(i, len(word) - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1 and len(word) > 1:  # drop a letter
        return word[:i] + word[i + 1 :]
    if kind == 2:  # double a letter (sticky key)
        return word[: i + 1] + word[i:]
    return word[:i] + _LETTERS[int(rng.integers(0, 26))] + word[i + 1 :]


# --- one table --------------------------------------------------------------------------------------
def degraded_table(
    table: Table, preprocessor: Preprocessor, name: str, family: str, s: float, seed: int
) -> Table:
    """The table with input `name` degraded by `family` at severity `s` (media cells become bytes)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(family.encode()), round(s * 10)])
    if family == "removal":
        chosen = np.zeros(len(table), dtype=bool)
        chosen[rng.permutation(len(table))[: round(s * len(table))]] = True
        return without_input(table, preprocessor, name, chosen)
    modality = preprocessor.inputs[name]
    frame = table.frame.copy()
    if modality is Modality.NUMERIC:
        for column in input_columns(preprocessor, name):
            std = preprocessor.state.numeric[column].std
            values = frame[column].map(_number)
            noise = rng.normal(0.0, s * std, size=len(frame))
            frame[column] = values + noise  # NaN (a missing value) stays missing
        return with_frame(table, frame)
    cells = frame[name].tolist()
    out: list[Any] = []
    for cell in cells:
        if is_missing(cell) or (isinstance(cell, str) and not cell.strip()):
            out.append(cell)
        elif modality is Modality.TEXT:
            out.append(noisy_text(str(cell), family, s, rng))
        else:
            out.append(_noisy_media(cell, table, preprocessor, modality, family, s, rng))
    frame[name] = out
    return with_frame(table, frame)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _noisy_media(
    cell: Any, table: Table, preprocessor: Preprocessor, modality: Modality, family: str, s: float, rng: Rng
) -> bytes:
    cfg = preprocessor.state.config
    source = resolve_media(
        cell, table.base_dir, allow_base64=table.from_python, allow_paths=table.media_paths
    )
    assert source is not None
    buffer = io.BytesIO()
    if modality is Modality.IMAGE:
        data = read_source_bytes(source, cfg.image.max_file_bytes)
        with Image.open(io.BytesIO(data)) as opened:
            pixels = np.asarray(opened.convert(cfg.image.mode))
        Image.fromarray(noisy_image(pixels, family, s, rng)).save(buffer, format="PNG")
    else:
        data = read_source_bytes(source, cfg.audio.max_file_bytes)
        wave, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
        sf.write(buffer, noisy_wave(wave.mean(1), family, s, rng), rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def area_under_curve(values: list[float], severities: tuple[float, ...] = SEVERITIES) -> float:
    """Trapezoid rule over the severities (Δs = 0.1 on [0, 1])."""
    return float(np.trapezoid(np.asarray(values, dtype=np.float64), np.asarray(severities)))


def input_preprocessors(scorer: Scorer) -> dict[str, Preprocessor]:
    """Input name → the preprocessor that knows its modality and training statistics. An ensemble's
    members see the same degraded table, so each input is degraded once for all of them."""
    from polyfuse.evaluation.late_fusion import LateFusionEnsemble

    if isinstance(scorer, LateFusionEnsemble):
        return dict(scorer.input_preprocessors)
    return dict.fromkeys(scorer.model.input_keys, scorer.preprocessor)


def robustness_curves(
    predictor: Scorer,
    table: Table,
    target: str | None = None,
    *,
    inputs: list[str] | None = None,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """{"target", "metric", "severities", "clean", "curves": {input: {family: {"values", "auc"}}}}."""
    target = default_target(predictor.specs, target)
    metric = PRIMARY_METRIC[predictor.specs[target].task]
    tick = progress or (lambda: None)

    def score(t: Table) -> float:
        return float(predictor.evaluate(t)[target][metric])

    clean = score(table)
    tick()
    preprocessors = input_preprocessors(predictor)
    curves: dict[str, dict[str, Any]] = {}
    for name in inputs if inputs is not None else list(preprocessors):
        preprocessor = preprocessors[name]
        curves[name] = {}
        for family in FAMILIES[preprocessor.inputs[name]]:
            values = [clean]
            for s in SEVERITIES[1:]:
                values.append(score(degraded_table(table, preprocessor, name, family, s, seed)))
                tick()
            curves[name][family] = {"values": values, "auc": area_under_curve(values)}
    return {
        "target": target,
        "metric": metric,
        "severities": list(SEVERITIES),
        "clean": clean,
        "seed": seed,
        "curves": curves,
    }


def robustness_steps(predictor: Scorer, inputs: list[str] | None = None) -> int:
    """How many times `robustness_curves` calls `progress`."""
    preprocessors = input_preprocessors(predictor)
    names = inputs if inputs is not None else list(preprocessors)
    return 1 + sum(len(FAMILIES[preprocessors[n].inputs[n]]) * (len(SEVERITIES) - 1) for n in names)
