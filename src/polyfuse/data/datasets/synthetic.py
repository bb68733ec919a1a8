"""A small synthetic table with every kind of column, for tests, demos and smoke runs.

Each row's class shows, with noise, in every modality, so a model can learn it from any one of them:
- text: two class keywords among filler words (each keyword is swapped for another class's with p=0.15);
- image: a 32x32 RGB picture with a bright blob whose position and colour depend on the class;
- audio: 0.25 s at 8 kHz of a tone whose frequency depends on the class (`tone_frequency`), plus noise;
- amount and colour: weakly correlated with the class.
Cells are missing (empty) at `missing_rate`, but never every input of one row.
"""

from __future__ import annotations

import colorsys
import csv
import os
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
from PIL import Image

COLUMNS = ("id", "text", "image", "audio", "amount", "colour", "label", "split")
INPUTS = ("text", "image", "audio", "amount", "colour")  # the columns that may be missing
TABLE_NAME = "synthetic.csv"
SAMPLE_RATE = 8000  # Hz
AUDIO_SAMPLES = 2000  # 0.25 s
IMAGE_SIZE = 32
MAX_CLASSES = 20  # keeps tones at least 150 Hz apart below Nyquist and one keyword group per class
TEST_FRACTION = 0.2

COLOURS = ("red", "green", "blue", "yellow", "purple")
_KEYWORDS = (
    ("river", "boat", "fish"),
    ("engine", "wheel", "road"),
    ("guitar", "song", "drum"),
    ("bread", "soup", "apple"),
    ("planet", "orbit", "comet"),
    ("tennis", "goal", "referee"),
    ("garden", "flower", "seed"),
    ("castle", "king", "sword"),
    ("winter", "snow", "frost"),
    ("market", "price", "trade"),
    ("doctor", "fever", "clinic"),
    ("forest", "wolf", "pine"),
    ("camera", "lens", "photo"),
    ("ocean", "wave", "coral"),
    ("desert", "sand", "camel"),
    ("library", "novel", "poem"),
    ("circuit", "voltage", "wire"),
    ("bakery", "flour", "oven"),
    ("mountain", "summit", "rope"),
    ("theatre", "actor", "stage"),
)
# fmt: off
_FILLER = (
    "the", "a", "some", "this", "that", "very", "quite", "rather", "and", "then", "today", "later", "with",
    "about", "from", "over", "under", "near", "really", "just", "maybe", "often", "seen", "said", "thing",
    "stuff", "item", "note", "report", "looks", "seems", "feels",
)
# fmt: on


def class_name(k: int) -> str:
    return f"class_{k}"


def tone_frequency(k: int, n_classes: int) -> float:
    """The audio tone of class k, in Hz: evenly spaced from 400 Hz, all below 3.4 kHz (Nyquist is 4 kHz)."""
    return 400.0 + k * min(300.0, 3000.0 / n_classes)


def make_synthetic_table(
    out: Path, n_rows: int = 300, seed: int = 0, n_classes: int = 3, missing_rate: float = 0.1
) -> Path:
    """Write `out/synthetic.csv` plus `out/images/*.png` and `out/audio/*.wav`; return the CSV's path.

    Deterministic in `seed`: the same arguments give byte-identical files. Labels are `class_0`, ...;
    `split` is `train` for 80% of rows (a seeded shuffle) and `test` for the rest.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows={n_rows}: need at least 1 row")
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"n_classes={n_classes}: choose between 2 and {MAX_CLASSES}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate={missing_rate}: choose a fraction in [0, 1)")
    out = Path(out).expanduser()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_rows)
    order = rng.permutation(n_rows)
    n_test = round(n_rows * TEST_FRACTION)
    splits = np.full(n_rows, "train", dtype=object)
    splits[order[:n_test]] = "test"
    missing = rng.random((n_rows, len(INPUTS))) < missing_rate
    for empty_row in np.flatnonzero(missing.all(axis=1)).tolist():
        missing[empty_row, rng.integers(len(INPUTS))] = False  # keep one input so no row is entirely empty

    rows: list[list[object]] = []
    for i in range(n_rows):
        k = int(labels[i])
        # Every value is drawn even when its cell ends up missing, so the mask does not shift the stream.
        text = _text(rng, k, n_classes)
        image = _image(rng, k, n_classes)
        wave = _tone(rng, k, n_classes)
        amount = round(float(np.exp(rng.normal(3.0 + 0.3 * k, 0.8))), 2)
        favoured = COLOURS[k % len(COLOURS)]
        colour = favoured if rng.random() < 0.4 else COLOURS[int(rng.integers(len(COLOURS)))]

        image_rel, audio_rel = f"images/{i:05d}.png", f"audio/{i:05d}.wav"
        is_missing = dict(zip(INPUTS, missing[i].tolist(), strict=True))
        if not is_missing["image"]:
            Image.fromarray(image).save(out / image_rel)
        if not is_missing["audio"]:
            sf.write(str(out / audio_rel), wave, SAMPLE_RATE, subtype="PCM_16")
        values: dict[str, object] = {
            "text": text,
            "image": image_rel,
            "audio": audio_rel,
            "amount": f"{amount:.2f}",
            "colour": colour,
        }
        cells = ["" if is_missing[c] else values[c] for c in INPUTS]
        rows.append([i, *cells, class_name(k), splits[i]])

    # The CSV goes in last, via a temporary file and a rename: a reader never sees a half-written table.
    # Not tempfile.mkstemp: its files are private (0600), and this one becomes the user's table.
    tmp_name = out / f".{TABLE_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with tmp_name.open("x", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        os.replace(tmp_name, out / TABLE_NAME)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
    return out / TABLE_NAME


def _text(rng: np.random.Generator, k: int, n_classes: int) -> str:
    words = [str(w) for w in rng.choice(_FILLER, size=int(rng.integers(6, 11)))]
    for _ in range(2):
        source = k if rng.random() >= 0.15 else int(rng.integers(n_classes))
        group = _KEYWORDS[source]
        words.insert(int(rng.integers(len(words) + 1)), group[int(rng.integers(len(group)))])
    return " ".join(words)


def _image(rng: np.random.Generator, k: int, n_classes: int) -> npt.NDArray[np.uint8]:
    angle = 2 * np.pi * k / n_classes
    cy = IMAGE_SIZE / 2 + 9 * np.sin(angle) + rng.normal(0, 1.5)
    cx = IMAGE_SIZE / 2 + 9 * np.cos(angle) + rng.normal(0, 1.5)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))  # (H, W)
    rgb = np.array(colorsys.hsv_to_rgb(k / n_classes, 0.8, 1.0))  # (3,)
    x = 0.1 + rng.normal(0, 0.08, (IMAGE_SIZE, IMAGE_SIZE, 3)) + 0.9 * blob[..., None] * rgb  # (H, W, 3)
    pixels: npt.NDArray[np.uint8] = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return pixels


def _tone(rng: np.random.Generator, k: int, n_classes: int) -> npt.NDArray[np.float32]:
    t = np.arange(AUDIO_SAMPLES) / SAMPLE_RATE
    freq = tone_frequency(k, n_classes) * (1 + rng.normal(0, 0.01))
    wave = 0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 0.1, AUDIO_SAMPLES)
    return np.clip(wave, -1, 1).astype(np.float32)
