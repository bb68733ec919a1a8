"""A quick look, at `polyfuse init`, at how much each input says about the target on its own.

Two kinds of table want different models. When the inputs are redundant (each names the label: a spoken
digit and an image of it), the best model pools per-input vectors, hides inputs at random in training
(modality dropout) and trains a head per input, so that a row missing an input is still predicted well.
When they are complementary (a question about a picture: neither alone answers it), those same choices
hurt, and the model needs inputs to interact (FiLM: one input modulates the other's features).

The probe tells them apart cheaply: on up to `SAMPLE_ROWS` labelled training rows, a linear classifier
per input on simple features (downsampled pixels; per-segment log-mel means; word counts; numbers;
one-hot categories), scored by 3-fold cross-validation. Its *skill* is accuracy above the majority
class, rescaled to [0, 1] (0: no better than always guessing the commonest answer; 1: perfect). If no
input alone reaches `REDUNDANT_SKILL`, the table is taken as complementary.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from polyfuse.data.errors import MediaError
from polyfuse.data.media import is_missing, resolve_media
from polyfuse.data.modalities.audio import audio_features, decode_audio
from polyfuse.data.modalities.image import decode_image
from polyfuse.data.preprocess import PreprocessingConfig
from polyfuse.data.schema import Modality, Role, TableSchema
from polyfuse.data.table import Table

SAMPLE_ROWS = 600
FOLDS = 3
REDUNDANT_SKILL = 0.5  # AV-Digits inputs score 0.8-0.9 alone, the digit questions' at most 0.2 (tests)
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class InputProbe:
    """rows: labelled rows probed; majority: accuracy of always guessing the commonest class; accuracy and
    skill per input (inputs missing from every sampled row are left out)."""

    rows: int
    majority: float
    accuracy: dict[str, float]
    skill: dict[str, float]

    @property
    def complementary(self) -> bool:
        return len(self.skill) >= 2 and max(self.skill.values()) < REDUNDANT_SKILL

    def summary(self) -> str:
        alone = ", ".join(f"{name} {self.accuracy[name]:.2f}" for name in self.accuracy)
        return f"linear probe on {self.rows} training rows, each input alone: {alone} (majority {self.majority:.2f})"


def probe_inputs(
    table: Table, schema: TableSchema, target: str, preprocessing: PreprocessingConfig, seed: int = 0
) -> InputProbe | None:
    """Each input's own predictive power for the classification `target`; None when too few labelled
    rows (fewer than 30, or fewer than FOLDS per class) make the figures meaningless."""
    threads = torch.get_num_threads()
    # tiny matrices: one thread is several times faster than a pool that waits on a busy machine
    torch.set_num_threads(1)
    try:
        return _probe(table, schema, target, preprocessing, seed)
    finally:
        torch.set_num_threads(threads)


def _probe(
    table: Table, schema: TableSchema, target: str, preprocessing: PreprocessingConfig, seed: int
) -> InputProbe | None:
    frame = table.frame
    rows = frame.index[~frame[target].map(is_missing)]
    split_columns = schema.columns_of(Role.SPLIT)
    if split_columns:  # never look at the test rows
        rows = rows[frame.loc[rows, split_columns[0]].astype(str).str.lower().isin(["train", "training"])]
    rng = np.random.default_rng(seed)
    rows = rows[rng.permutation(len(rows))[:SAMPLE_ROWS]]
    labels_text = frame.loc[rows, target].astype(str).to_numpy()
    classes, labels = np.unique(labels_text, return_inverse=True)
    counts = np.bincount(labels)
    if len(rows) < 30 or len(classes) < 2 or counts.min() < FOLDS:
        return None
    majority = float(counts.max() / counts.sum())
    accuracy, skill = {}, {}
    for name, modality in schema.input_names().items():
        features, present = _features(table, schema, name, modality, rows, preprocessing)
        if features is None or not present.any():
            continue
        acc = _cross_validated_accuracy(features, present, torch.as_tensor(labels), len(classes), seed)
        accuracy[name] = round(acc, 4)
        skill[name] = round(max(0.0, (acc - majority) / (1.0 - majority)), 4)
    return InputProbe(len(rows), round(majority, 4), accuracy, skill)


def _features(
    table: Table, schema: TableSchema, name: str, modality: Modality, rows: object, cfg: PreprocessingConfig
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(N, F) float features of one input over the sampled rows, and (N,) bool: the rows that have it.
    The numeric and category inputs group every column of their kind."""
    if modality in (Modality.NUMERIC, Modality.CATEGORY):
        blocks = [_tabular(table.frame.loc[rows, c].tolist(), modality) for c in schema.columns_of(modality)]  # type: ignore[index]
        features = torch.cat([b[0] for b in blocks], dim=1)
        return features, torch.stack([b[1] for b in blocks], dim=1).any(dim=1)
    values = table.frame.loc[rows, name].tolist()  # type: ignore[index]
    present = torch.tensor([not is_missing(v) for v in values])
    if modality is Modality.TEXT:
        return _word_counts(
            [str(v).lower() if p else "" for v, p in zip(values, present, strict=True)]
        ), present
    encoded = [
        _media_features(table, v, modality, cfg) if p else None for v, p in zip(values, present, strict=True)
    ]
    width = next((e.shape[0] for e in encoded if e is not None), None)
    if width is None:
        return None, torch.zeros(len(values), dtype=torch.bool)
    present = torch.tensor([e is not None for e in encoded])  # unreadable files count as missing here
    return torch.stack([e if e is not None else torch.zeros(width) for e in encoded]), present


def _tabular(values: list[object], modality: Modality) -> tuple[torch.Tensor, torch.Tensor]:
    """One column: (N, 2) value and missing flag for a number, (N, ≤50) one-hot of the commonest values
    for a category; and (N,) bool present."""
    present = torch.tensor([not is_missing(v) for v in values])
    if modality is Modality.NUMERIC:
        numbers = [float(v) if p else 0.0 for v, p in zip(values, present.tolist(), strict=True)]  # type: ignore[arg-type]
        return torch.stack([torch.tensor(numbers), (~present).float()], dim=1), present
    top = [v for v, _ in Counter(str(v) for v in values if not is_missing(v)).most_common(50)]
    index = {v: i for i, v in enumerate(top)}
    one_hot = torch.zeros(len(values), max(1, len(top)))
    for i, v in enumerate(values):
        if not is_missing(v) and str(v) in index:
            one_hot[i, index[str(v)]] = 1.0
    return one_hot, present


def _media_features(
    table: Table, value: object, modality: Modality, preprocessing: PreprocessingConfig
) -> torch.Tensor | None:
    try:
        source = resolve_media(value, table.base_dir, allow_base64=False)
        if source is None:
            return None
        if modality is Modality.IMAGE:
            pixels = torch.from_numpy(decode_image(source, preprocessing.image)).float()  # (H, W, C)
            grey = pixels.mean(dim=-1)[None, None]  # (1, 1, H, W)
            return F.adaptive_avg_pool2d(grey, (16, 16)).flatten() / 255.0  # (256,)
        waveform = decode_audio(source, preprocessing.audio)
        spectrum = audio_features(waveform, preprocessing.audio)  # (F, T)
        # four segment means keep the coarse time course (a spoken word's shape), plus per-band spread
        segments = F.adaptive_avg_pool1d(spectrum[None], 4)[0]  # (F, 4)
        return torch.cat([segments.flatten(), spectrum.std(dim=1)])  # (5F,)
    except (MediaError, OSError, ValueError):
        return None  # `polyfuse data inspect` / training report unreadable files with their rows


def _word_counts(texts: list[str]) -> torch.Tensor:
    """(N, V) log(1 + count) of the words seen at least twice in the sample (at most 2,000 of them)."""
    words = [_WORD.findall(t) for t in texts]
    frequent = [w for w, c in Counter(w for ws in words for w in ws).most_common(2000) if c >= 2]
    index = {w: i for i, w in enumerate(frequent)}
    counts = torch.zeros(len(texts), max(1, len(frequent)))
    for row, ws in enumerate(words):
        for w in ws:
            if w in index:
                counts[row, index[w]] += 1.0
    return torch.log1p(counts)


def _cross_validated_accuracy(
    features: torch.Tensor, present: torch.Tensor, labels: torch.Tensor, classes: int, seed: int
) -> float:
    """Mean held-out accuracy of an L2-regularised softmax regression over FOLDS folds. Rows without the
    input are scored as the majority class of the training fold (what a model with nothing to go on does)."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.randperm(len(labels), generator=generator) % FOLDS
    correct = 0
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        fit = train & present
        majority = torch.bincount(labels[train], minlength=classes).argmax()
        if fit.sum() < 2:
            correct += int((labels[test] == majority).sum())
            continue
        mean, std = features[fit].mean(0), features[fit].std(0).clamp(min=1e-6)
        x = (features - mean) / std  # (N, F) standardised on the training fold
        weights = _fit_softmax_regression(x[fit], labels[fit], classes)
        predicted = torch.cat([x, torch.ones(len(x), 1)], dim=1) @ weights  # (N, classes)
        guess = torch.where(present, predicted.argmax(1), majority)
        correct += int((guess[test] == labels[test]).sum())
    return correct / len(labels)


def _fit_softmax_regression(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-2) -> torch.Tensor:
    """(F + 1, classes) weights (last row: bias) minimising cross-entropy + l2 * ||W||² by L-BFGS."""
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # (n, F + 1)
    weights = torch.zeros(design.shape[1], classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(design @ weights, y) + l2 * weights[:-1].pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    return weights.detach()
