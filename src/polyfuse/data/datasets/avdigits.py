"""AV-Digits: an audio-visual digit table built from the MNIST test set and the Free Spoken Digit Dataset.

The protocol is the one in `shared/data/README.md`, implemented exactly:

- Audio pool: all 3,000 FSDD recordings `{digit}_{speaker}_{index}.wav`; `test` = index 0-4, else `train`.
- Image pool: MNIST test-set image i (0-based, file order) is `test` when i % 5 == 0, else `train`.
- Pairing: walk the recordings in sorted file-name order, which here means Python's `sorted()` of the file
  names as plain strings (so `0_george_10.wav` comes before `0_george_2.wav`). Each recording takes the next
  unused image of its digit from its split's pool in index order, restarting at that pool's first image of
  the digit if it runs out. Row id r is the recording's position in that walk (0..2999).
- Speaker-held-out variant: the same rows and pairs; only `split` changes (`test` = one speaker).
- Noisy variant (AV-Digits-N): row r is degraded with `numpy.random.default_rng(r)`, image first, then audio.

The table is `av_digits.csv` with columns `id, image, audio, label, speaker, split`, media paths relative to
the table's folder, and `av_digits.json` records how it was built.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf
from PIL import Image

from polyfuse.data.errors import DataError, Problem

COLUMNS = ("id", "image", "audio", "label", "speaker", "split")
TABLE_NAME = "av_digits.csv"
META_NAME = "av_digits.json"
SAMPLE_RATE = 8000  # Hz, FSDD's rate; the noisy variant writes at the same rate

MNIST_IMAGES = "t10k-images-idx3-ubyte"
MNIST_LABELS = "t10k-labels-idx1-ubyte"
# Per-digit label counts of the MNIST test set (README): a cheap check that we read the right files.
MNIST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
N_RECORDINGS = 3000  # FSDD v1.0.10; other versions would silently give a different benchmark

MNIST_URL = "http://yann.lecun.com/exdb/mnist/ (or any mirror)"
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset (v1.0.10)"

_RECORDING = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$")
# IDX type codes (third byte of the magic number) and their big-endian numpy types.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# What a previous build leaves in `out`; anything else there means the folder is not ours to replace.
_OUTPUTS = frozenset({TABLE_NAME, META_NAME, "images", "audio"})


@dataclass(frozen=True)
class _Recording:
    name: str  # file name, e.g. "0_george_12.wav"
    digit: int
    speaker: str
    index: int

    @property
    def split(self) -> str:
        return "test" if self.index <= 4 else "train"


def read_idx(path: Path | str) -> npt.NDArray[Any]:
    """Read an IDX file (the MNIST format), gzipped or not, into an array of its declared shape.

    Raises DataError naming the file when the magic number, type code or dimensions do not match the bytes.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError([Problem(f"cannot read IDX file: {e.strerror}", file=str(path))]) from None
    # Detect gzip by its own magic bytes rather than the suffix: users gunzip files and keep names.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                [Problem(f"corrupt gzip data ({e})", file=str(path), fix="download the file again")]
            ) from None

    def bad(message: str) -> DataError:
        return DataError(
            [Problem(f"not a valid IDX file: {message}", file=str(path), fix="download it again")]
        )

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise bad(f"magic number {raw[:4].hex() or '(empty)'} does not start with 0000")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise bad(f"unknown type code 0x{code:02x} (known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
    if ndim == 0:
        raise bad("zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad(f"{len(raw)} bytes is shorter than the {header}-byte header for {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise bad(f"{len(raw)} bytes, but shape {dims} of {dtype.name} needs {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def _mnist_files(folder: Path) -> tuple[Path, Path] | None:
    """The (images, labels) files in `folder`, each either gzipped or not; None when one is missing."""
    found: list[Path] = []
    for stem in (MNIST_IMAGES, MNIST_LABELS):
        candidates = [folder / f"{stem}.gz", folder / stem]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _is_recordings_dir(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(_RECORDING.match(entry.name) for entry in os.scandir(folder) if entry.is_file())


def locate_sources(source: Path | None, mnist: Path | None, fsdd: Path | None) -> tuple[Path, Path]:
    """Find (MNIST folder, FSDD recordings folder) from what the user gave.

    Accepted layouts:
    - `source/mnist/t10k-*.gz` + `source/fsdd/recordings/` (the shared data folder);
    - MNIST as downloaded: a folder holding `t10k-images-idx3-ubyte[.gz]` and `t10k-labels-idx1-ubyte[.gz]`
      (given as `mnist`, or `source` itself, `source/mnist` or torchvision's `source/MNIST/raw`);
    - FSDD as cloned: `free-spoken-digit-dataset/` (with `recordings/`) or the recordings folder itself
      (given as `fsdd`, or found as `source/free-spoken-digit-dataset/recordings` or `source/recordings`).
    With neither `source` nor both folders given, `source` is `default_data_dir()`.
    """
    # Accept str too: these come straight from CLI arguments and notebooks.
    source, mnist, fsdd = (None if p is None else Path(p).expanduser() for p in (source, mnist, fsdd))
    if source is None and (mnist is None or fsdd is None):
        # Imported here: the package's __init__ imports this module.
        from polyfuse.data.datasets import default_data_dir

        source = default_data_dir()
    problems: list[Problem] = []

    if mnist is not None:
        mnist_candidates = [mnist, mnist / "mnist", mnist / "MNIST" / "raw"]
    else:
        assert source is not None
        mnist_candidates = [source / "mnist", source / "MNIST" / "raw", source]
    mnist_dir = next((c for c in mnist_candidates if _mnist_files(c) is not None), None)
    if mnist_dir is None:
        problems.append(
            Problem(
                f"MNIST test set not found: looked for {MNIST_IMAGES}[.gz] and {MNIST_LABELS}[.gz] in "
                + ", ".join(str(c) for c in mnist_candidates),
                fix=f"download both files from {MNIST_URL} into one folder and pass it with --mnist (mnist= in Python)",
            )
        )

    if fsdd is not None:
        fsdd_candidates = [fsdd, fsdd / "recordings"]
    else:
        assert source is not None
        fsdd_candidates = [
            source / "fsdd" / "recordings",
            source / "free-spoken-digit-dataset" / "recordings",
            source / "recordings",
        ]
    fsdd_dir = next((c for c in fsdd_candidates if _is_recordings_dir(c)), None)
    if fsdd_dir is None:
        problems.append(
            Problem(
                "FSDD recordings not found: looked for {digit}_{speaker}_{index}.wav files in "
                + ", ".join(str(c) for c in fsdd_candidates),
                fix=f"clone {FSDD_URL} and pass the clone (or its recordings/ folder) with --fsdd (fsdd= in Python)",
            )
        )
    if problems:
        raise DataError(problems)
    assert mnist_dir is not None and fsdd_dir is not None
    return mnist_dir, fsdd_dir


def _load_mnist(folder: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], tuple[Path, Path]]:
    files = _mnist_files(folder)
    assert files is not None, "locate_sources returned a folder without the MNIST files"
    images, labels = read_idx(files[0]), read_idx(files[1])
    problems: list[Problem] = []
    if images.dtype != np.uint8 or images.shape != (10000, 28, 28):
        problems.append(
            Problem(
                f"expected 10000 uint8 images of 28x28, got {images.dtype} {images.shape}", file=str(files[0])
            )
        )
    if labels.dtype != np.uint8 or labels.shape != (10000,):
        problems.append(
            Problem(f"expected 10000 uint8 labels, got {labels.dtype} {labels.shape}", file=str(files[1]))
        )
    elif tuple(np.bincount(labels, minlength=10).tolist()) != MNIST_LABEL_COUNTS:
        problems.append(
            Problem(
                f"label counts {np.bincount(labels).tolist()} are not the MNIST test set's "
                f"{list(MNIST_LABEL_COUNTS)}",
                file=str(files[1]),
                fix="use the MNIST test set (t10k) files, not the training set",
            )
        )
    if problems:
        raise DataError(problems)
    return images, labels, files


def _list_recordings(folder: Path) -> list[_Recording]:
    """Every recording, in the protocol's walk order: Python `sorted()` of the file names as strings."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.endswith(".wav"))
    recordings: list[_Recording] = []
    problems: list[Problem] = []
    for name in names:
        m = _RECORDING.match(name)
        if m is None:
            problems.append(
                Problem(
                    "not named {digit}_{speaker}_{index}.wav", file=str(folder / name), fix="remove the file"
                )
            )
            continue
        recordings.append(_Recording(name, int(m.group(1)), m.group(2), int(m.group(3))))
    if not problems and len(recordings) != N_RECORDINGS:
        problems.append(
            Problem(
                f"found {len(recordings)} recordings in {folder}; the protocol needs FSDD's {N_RECORDINGS}",
                fix=f"use {FSDD_URL}",
            )
        )
    for rec in recordings if not problems else []:
        # Checked up front so that a bad file fails the build before anything is written.
        info = sf.info(str(folder / rec.name))
        if info.samplerate != SAMPLE_RATE or info.channels != 1:
            problems.append(
                Problem(
                    f"expected mono {SAMPLE_RATE} Hz audio, "
                    f"got {info.channels} channel(s) at {info.samplerate} Hz",
                    file=str(folder / rec.name),
                )
            )
    if problems:
        raise DataError(problems)
    return recordings


def _image_split(i: int) -> str:
    return "test" if i % 5 == 0 else "train"


def _pair(recordings: Sequence[_Recording], labels: npt.NDArray[np.uint8]) -> list[int]:
    """The MNIST image index for each recording, by the protocol's pairing walk."""
    pools: dict[tuple[str, int], list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        pools.setdefault((_image_split(i), label), []).append(i)  # index order
    used: dict[tuple[str, int], int] = {}
    pairs: list[int] = []
    for rec in recordings:
        key = (rec.split, rec.digit)
        pool = pools.get(key)
        if not pool:
            raise DataError(f"no MNIST image of digit {rec.digit} in the {rec.split} pool")
        n = used.get(key, 0)
        pairs.append(pool[n % len(pool)])  # wrap round to the pool's first image when it runs out
        used[key] = n + 1
    return pairs


def _degrade(
    pixels: npt.NDArray[np.uint8], wave: npt.NDArray[np.float64], row_id: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """AV-Digits-N: the README's formula, with one generator per row so any row can be rebuilt alone."""
    rng = np.random.default_rng(row_id)
    x = pixels.astype(np.float64) / 255.0
    x = np.clip(x + rng.normal(0, 0.3, (28, 28)), 0, 1)
    y0, x0 = rng.integers(0, 19, 2)
    x[y0 : y0 + 10, x0 : x0 + 10] = 0
    w = wave + rng.normal(0, np.sqrt(np.mean(wave**2) / 10), len(wave))  # white noise at 10 dB SNR
    return np.round(x * 255).astype(np.uint8), w.astype(np.float32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_replaceable(out: Path) -> None:
    """Refuse to replace a folder that holds anything but a previous build: it may be the user's data."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(
            [Problem("exists and is not a folder", file=str(out), fix="choose another output path")]
        )
    foreign = sorted(name for name in os.listdir(out) if name not in _OUTPUTS)
    if foreign:
        raise DataError(
            [
                Problem(
                    "output folder holds files that are not from an AV-Digits build "
                    f"({', '.join(foreign[:5])}"
                    + (", ..." if len(foreign) > 5 else "")
                    + "), so it will not be replaced",
                    file=str(out),
                    fix="choose a new or empty folder",
                )
            ]
        )


def build_av_digits(
    out: Path,
    source: Path | None = None,
    *,
    mnist: Path | None = None,
    fsdd: Path | None = None,
    variant: Literal["clean", "noisy"] = "clean",
    holdout_speaker: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build the AV-Digits table in `out` and return the path of `out/av_digits.csv`.

    `source` is the shared data folder or a folder holding the downloaded sources; `mnist` and `fsdd` point
    at them separately (see `locate_sources`). `variant="noisy"` builds AV-Digits-N; `holdout_speaker` makes
    that speaker's 500 recordings the test split. `progress(done, total)` is called after each row.

    The build is atomic: everything is written to a temporary folder beside `out`, which then replaces `out`
    (a previous build there is removed; a folder holding anything else is refused).
    """
    if variant not in ("clean", "noisy"):
        raise ValueError(f"variant '{variant}' is not one of: clean, noisy")
    out = Path(out).expanduser().resolve()
    _check_replaceable(out)
    mnist_dir, recordings_dir = locate_sources(source, mnist, fsdd)
    images, labels, mnist_files = _load_mnist(mnist_dir)
    recordings = _list_recordings(recordings_dir)
    speakers = sorted({rec.speaker for rec in recordings})
    if holdout_speaker is not None and holdout_speaker not in speakers:
        raise DataError(
            [
                Problem(
                    f"unknown holdout speaker '{holdout_speaker}'",
                    fix=f"choose one of: {', '.join(speakers)}",
                )
            ]
        )
    pairs = _pair(recordings, labels)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "building")
    tmp.mkdir()
    try:
        (tmp / "images").mkdir()
        (tmp / "audio").mkdir()
        rows: list[tuple[int, str, str, int, str, str]] = []
        total = len(recordings)
        for row_id, (rec, image_index) in enumerate(zip(recordings, pairs, strict=True)):
            assert int(labels[image_index]) == rec.digit
            pixels = images[image_index]
            image_rel, audio_rel = f"images/{row_id:05d}.png", f"audio/{rec.name}"
            if variant == "noisy":
                wave, rate = sf.read(str(recordings_dir / rec.name), dtype="float64", always_2d=False)
                assert rate == SAMPLE_RATE  # checked in _list_recordings
                pixels, noisy_wave = _degrade(pixels, wave, row_id)
                # FLOAT samples: the added noise may push peaks past [-1, 1], which PCM would clip.
                sf.write(str(tmp / audio_rel), noisy_wave, SAMPLE_RATE, subtype="FLOAT")
            else:
                shutil.copyfile(recordings_dir / rec.name, tmp / audio_rel)
            Image.fromarray(pixels).save(tmp / image_rel)
            split = (
                rec.split
                if holdout_speaker is None
                else ("test" if rec.speaker == holdout_speaker else "train")
            )
            rows.append((row_id, image_rel, audio_rel, rec.digit, rec.speaker, split))
            if progress is not None:
                progress(row_id + 1, total)

        with (tmp / TABLE_NAME).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        n_test = sum(1 for row in rows if row[5] == "test")
        meta = {
            "dataset": "AV-Digits-N" if variant == "noisy" else "AV-Digits",
            "variant": variant,
            "holdout_speaker": holdout_speaker,
            "rows": {"total": len(rows), "train": len(rows) - n_test, "test": n_test},
            "speakers": speakers,
            "sources": {
                "mnist_images": {"file": mnist_files[0].name, "sha256": _sha256(mnist_files[0])},
                "mnist_labels": {"file": mnist_files[1].name, "sha256": _sha256(mnist_files[1])},
                "fsdd_recordings": len(recordings),
            },
            "pairing": "recordings in Python sorted() order of file names; each takes the next unused MNIST "
            "test image of its digit from its split's pool (test: i % 5 == 0) in index order, wrapping round",
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / TABLE_NAME


def _sibling(out: Path, tag: str) -> Path:
    # Not tempfile.mkdtemp: its folders are private (0700), and this one becomes the user's output.
    return out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{tag}"


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished build to `out`, replacing a previous build with two renames."""
    if not out.exists():
        os.rename(tmp, out)
        return
    _check_replaceable(out)  # again: the folder may have changed while we were building
    trash = _sibling(out, "old")
    trash.mkdir()
    os.rename(out, trash / "previous")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(trash / "previous", out)  # put the previous build back rather than leave nothing
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
