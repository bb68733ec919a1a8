"""The fitted preprocessing of a table: per-modality configs plus what was learned from the training rows
(numeric statistics, category vocabularies, label maps). It travels with the model as JSON."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from polyfuse.data.cache import FeatureCache, params_digest
from polyfuse.data.errors import DataError, MediaError, Problem
from polyfuse.data.media import MediaSource, is_missing, read_source_bytes, resolve_media
from polyfuse.data.modalities.audio import (
    AudioConfig,
    SpecMasks,
    apply_spec_masks,
    audio_features,
    audio_features_batch,
    augment_waveform,
    decode_audio,
    draw_spec_masks,
    spec_augment,
)
from polyfuse.data.modalities.image import (
    ImageAugmentDraw,
    ImageConfig,
    apply_image_augment,
    augment_image,
    decode_image,
    draw_image_augment,
    image_to_tensor,
    images_to_tensor,
    normalised_black,
)
from polyfuse.data.modalities.pretrained import (
    AUDIO_FAMILIES,
    PretrainedInput,
    audio_values,
    feature_rows,
    image_fill,
    image_pixels,
    processor_digest,
    sampling_rate,
)
from polyfuse.data.modalities.tabular import (
    CategoryConfig,
    CategoryVocab,
    NumericConfig,
    NumericStats,
    category_key,
    to_number,
)
from polyfuse.data.modalities.text import TextConfig, load_tokenizer, pad_token_id, tokenize
from polyfuse.data.schema import Modality, TableSchema
from polyfuse.data.table import Table

PREPROCESSING_VERSION = 1
TaskKind = Literal["classification", "multilabel", "regression"]
MULTILABEL_SEPARATOR = "|"


class PreprocessingConfig(BaseModel):
    """How each modality is turned into tensors; shared by every column of that modality."""

    model_config = ConfigDict(extra="forbid")

    image: ImageConfig = Field(default_factory=ImageConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    numeric: NumericConfig = Field(default_factory=NumericConfig)
    category: CategoryConfig = Field(default_factory=CategoryConfig)


class TargetSpec(BaseModel):
    column: str
    task: TaskKind
    classes: list[str] = Field(default_factory=list, description="class names by id (classification)")
    mean: float = 0.0  # regression targets are standardised for training and un-standardised on output
    std: float = 1.0


class PreprocessorState(BaseModel):
    """Everything needed to turn a row into tensors exactly as in training."""

    version: int = PREPROCESSING_VERSION
    config: PreprocessingConfig
    table_schema: TableSchema
    numeric: dict[str, NumericStats] = Field(default_factory=dict)
    category: dict[str, CategoryVocab] = Field(default_factory=dict)
    targets: dict[str, TargetSpec] = Field(default_factory=dict)
    # input name → the preprocessing of the pretrained encoder that reads it (replaces the modality's
    # own settings for that input; see polyfuse.data.modalities.pretrained)
    pretrained: dict[str, PretrainedInput] = Field(default_factory=dict)


# One row's features, before collation: input name → tensor, or None where the row lacks it.
#   image (C, H, W); audio (F, T); text (T,) ids; numeric (N,) with NaN for missing values; category (K,)
Sample = dict[str, Any]

# What `encode_inputs(check=True)` gives for an image / audio cell whose features are cached: present, but
# not turned into a tensor (validation only needs to know the cell is usable).
CHECKED = torch.empty(0)


@dataclass(frozen=True)
class DeferredImage:
    """An image cell read but not yet made a tensor, its augmentation (if any) drawn but not yet applied:
    `Preprocessor.apply_deferred` normalises a batch's images at once and warps the drawn ones."""

    pixels: np.ndarray  # uint8 (H, W, C), a read-only view into the feature store
    draw: ImageAugmentDraw | None  # None: not augmented
    fill: tuple[float, ...]


@dataclass(frozen=True)
class DeferredAudio:
    """An audio cell whose waveform is augmented but whose features are not yet computed."""

    waveform: Tensor  # (N,)
    masks: SpecMasks  # SpecAugment's spans, applied to the features


@dataclass(frozen=True)
class _MediaRequest:
    """How `encode_inputs` was asked to treat image / audio cells (see its docstring)."""

    generator: torch.Generator | None
    check: bool
    cached_only: bool
    defer: bool = False


def media_file_name(cell: object) -> str | None:
    """The cell as a file name for an error message; None for missing values and inline data."""
    return None if is_missing(cell) or not isinstance(cell, str) or len(cell) > 300 else cell


def _log_mel(content: bytes, cfg: AudioConfig) -> np.ndarray:
    return audio_features(decode_audio(content, cfg), cfg).numpy()  # (F, T)


class Preprocessor:
    def __init__(self, state: PreprocessorState, cache: FeatureCache | None = None) -> None:
        self.state = state
        self.cache = cache or FeatureCache(None)
        self.inputs = state.table_schema.input_names()  # input name → modality, sorted
        self.numeric_columns = state.table_schema.columns_of(Modality.NUMERIC)
        self.category_columns = state.table_schema.columns_of(Modality.CATEGORY)
        cfg = state.config
        self._image_key = params_digest({"kind": "image", **cfg.image.model_dump(exclude={"augment"})})
        audio_params = cfg.audio.model_dump(exclude={"augment"})
        self._wave_key = params_digest({"kind": "audio.wave", **audio_params})
        self._audio_key = params_digest({"kind": "audio.features", **audio_params})
        self._pretrained_keys = {
            name: params_digest(
                {
                    "kind": "pretrained",
                    **processor_digest(spec),
                    "decode": (cfg.image if spec.family == "image" else cfg.audio).model_dump(
                        exclude={"augment"}
                    ),
                }
            )
            for name, spec in state.pretrained.items()
            if spec.family != "text"
        }
        self._image_fill = normalised_black(cfg.image)  # what augmentation fills uncovered pixels with
        augment = cfg.audio.augment
        # Gain and noise act on the waveform, so they need the decoded wave rather than cached features.
        self._wave_augment = augment.enabled and (
            augment.noise_probability > 0 or augment.gain_db != (0.0, 0.0)
        )
        # What validation stores per media input (the entries the check branch of `_single` fills): what
        # training then reads from the cache, so a file with all of them stored needs no second look.
        self._checked_keys = {
            name: self._stored_keys(name, modality)
            for name, modality in self.inputs.items()
            if modality in (Modality.IMAGE, Modality.AUDIO)
        }

    def _stored_keys(self, name: str, modality: Modality) -> tuple[str, ...]:
        if name in self._pretrained_keys:
            return (self._pretrained_keys[name],)
        if modality is Modality.IMAGE:
            return (self._image_key,)
        return (self._wave_key, self._audio_key) if self._wave_augment else (self._audio_key,)

    # --- fitting and persistence -------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        train: Table,
        schema: TableSchema,
        config: PreprocessingConfig,
        targets: Mapping[str, TaskKind | None] | None = None,
        cache: FeatureCache | None = None,
        pretrained: Mapping[str, PretrainedInput] | None = None,
    ) -> Preprocessor:
        """Fit statistics, vocabularies and label maps on the training rows only. `pretrained`: the inputs
        read by pretrained encoders, which get those encoders' own preprocessing."""
        frame = train.frame
        numeric = {c: NumericStats.fit(frame[c]) for c in schema.columns_of(Modality.NUMERIC)}
        category = {
            c: CategoryVocab.fit(frame[c], config.category) for c in schema.columns_of(Modality.CATEGORY)
        }
        specs = {}
        for column, task in (targets or {}).items():
            if column not in frame.columns:
                raise DataError(
                    [Problem(f"target column not found; columns: {list(frame.columns)}", column=column)]
                )
            specs[column] = fit_target(frame[column], column, task)
        state = PreprocessorState(
            config=config,
            table_schema=schema,
            numeric=numeric,
            category=category,
            targets=specs,
            pretrained=dict(pretrained or {}),
        )
        return cls(state, cache)

    def to_json(self) -> str:
        return self.state.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, cache: FeatureCache | None = None) -> Preprocessor:
        raw = json.loads(text)
        if raw.get("version") != PREPROCESSING_VERSION:
            raise DataError(
                f"preprocessing format version {raw.get('version')} is not supported by this polyfuse "
                f"(expects {PREPROCESSING_VERSION}); install the polyfuse version that saved the model"
            )
        return cls(PreprocessorState.model_validate(raw), cache)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.state.config.text.tokenizer)

    def tokenizer_of(self, name: str) -> Any:
        """The tokenizer of text input `name`: its pretrained encoder's own, else the configured one."""
        spec = self.state.pretrained.get(name)
        return load_tokenizer(spec.source) if spec is not None else self.tokenizer

    # --- one row -> tensors --------------------------------------------------------------------------
    def encode_inputs(
        self,
        row: Mapping[str, Any],
        base_dir: Path | None,
        *,
        allow_base64: bool = True,
        allow_paths: bool = True,
        generator: torch.Generator | None = None,
        check: bool = False,
        cached_only: bool = False,
        on_cell: Callable[[str], None] | None = None,
        defer_augmentation: bool = False,
    ) -> Sample:
        """Input name → tensor (None where missing). `generator` turns on train-time augmentation.
        `allow_paths=False`: media strings are base64 data only, never file names (see `resolve_media`).

        `defer_augmentation`: an image or audio cell of polyfuse's own preprocessing gets its augmentation
        drawn from `generator` (exactly as without deferring) but comes back as a DeferredImage /
        DeferredAudio; `apply_deferred` then finishes a batch of rows at once, to the same tensors.

        Validation's options: `check` computes and caches an image / audio cell's features but returns
        CHECKED for it instead of a tensor; `cached_only` raises NotCached for a media cell that would
        have to be read or decoded; `on_cell(name)` is called before each input is encoded (a decode
        pool times each file from there).

        Raises DataError listing every bad cell of the row (row number left for the caller to add).
        """
        sample: Sample = {}
        problems: list[Problem] = []
        media = _MediaRequest(generator, check, cached_only, defer_augmentation)
        for name, modality in self.inputs.items():
            if on_cell is not None:
                on_cell(name)
            try:
                if modality is Modality.NUMERIC:
                    sample[name] = self._numeric(row, problems)
                elif modality is Modality.CATEGORY:
                    sample[name] = self._category(row)
                else:
                    sample[name] = self._single(
                        name, modality, row.get(name), base_dir, allow_base64, allow_paths, media
                    )
            except MediaError as e:
                cell = row.get(name)
                problems.append(
                    Problem(e.message, column=name, file=media_file_name(cell), fix=e.fix, kind=e.kind)
                )
        if problems:
            raise DataError(problems)
        return sample

    def apply_deferred(self, samples: Sequence[Sample]) -> None:
        """Finish in place what `encode_inputs(defer_augmentation=True)` left for these rows: each image
        input's pixels normalised as one batch and the drawn warps applied at once (one affine grid and
        resampling), each audio input's features as one STFT. The samples end up exactly as `encode_inputs`
        without deferring makes them; a batch of 64 AV-Digits rows is read in about half the time."""
        for name in self.inputs:
            images = [i for i, s in enumerate(samples) if isinstance(s.get(name), DeferredImage)]
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i in images:
                by_shape.setdefault(samples[i][name].pixels.shape, []).append(i)
            for group in by_shape.values():
                deferred: list[DeferredImage] = [samples[i][name] for i in group]
                batch = images_to_tensor(np.stack([d.pixels for d in deferred]), self.state.config.image)
                batch = self._warp_drawn(batch, deferred)  # (B, C, H, W)
                for i, image in zip(group, batch.unbind(0), strict=True):
                    samples[i][name] = image
            clips = [i for i, s in enumerate(samples) if isinstance(s.get(name), DeferredAudio)]
            if clips:
                deferred_audio = [samples[i][name] for i in clips]
                features = audio_features_batch([d.waveform for d in deferred_audio], self.state.config.audio)
                for i, d, f in zip(clips, deferred_audio, features, strict=True):
                    samples[i][name] = apply_spec_masks(f, d.masks)

    @staticmethod
    def _warp_drawn(batch: Tensor, deferred: Sequence[DeferredImage]) -> Tensor:
        """The batch's images (B, C, H, W) with each drawn augmentation applied (to those images only)."""
        drawn = [k for k, d in enumerate(deferred) if d.draw is not None]
        if not drawn:
            return batch
        draws = [d.draw for d in deferred if d.draw is not None]
        if len(drawn) == len(deferred):
            return apply_image_augment(batch, draws, deferred[0].fill)
        rows = torch.tensor(drawn)
        batch[rows] = apply_image_augment(batch[rows], draws, deferred[0].fill)
        return batch

    def _cached(
        self,
        source: MediaSource,
        max_bytes: int,
        params_key: str,
        compute: Callable[[bytes], np.ndarray],
        media: _MediaRequest,
        *,
        copy: bool = True,
    ) -> np.ndarray:
        """The features of one file from the cache, read and computed on a miss. `copy=False`: a read-only
        view where the entry is stored (validation's checks, and pixels a batch copies when it stacks them)."""
        return self.cache.fetch_source(
            source,
            lambda: read_source_bytes(source, max_bytes),
            params_key,
            compute,
            cached_only=media.cached_only,
            copy=copy and not media.check,
        )

    def _single(
        self,
        name: str,
        modality: Modality,
        cell: object,
        base_dir: Path | None,
        allow_base64: bool,
        allow_paths: bool,
        media: _MediaRequest,
    ) -> Tensor | DeferredImage | DeferredAudio | None:
        cfg = self.state.config
        if modality is Modality.TEXT:
            if cell is None or (not isinstance(cell, str) and is_missing(cell)) or cell == "":
                return None
            tokenizer = self.tokenizer_of(name)
            text_cfg = cfg.text
            if name in self.state.pretrained and tokenizer.model_max_length < text_cfg.max_length:
                # past the backbone's position embeddings the ids would index nothing
                text_cfg = text_cfg.model_copy(update={"max_length": int(tokenizer.model_max_length)})
            return tokenize(cell, tokenizer, text_cfg)  # type: ignore[arg-type]
        source = resolve_media(cell, base_dir, allow_base64=allow_base64, allow_paths=allow_paths)
        if source is None:
            return None
        if (
            media.check
            and isinstance(source, Path)
            and self.cache.has_source(source, self._checked_keys[name])
        ):
            return CHECKED  # checked by an earlier run and unchanged since: every entry it fills is stored
        if name in self.state.pretrained:
            return self._pretrained(name, source, media)
        generator = media.generator
        if modality is Modality.IMAGE:
            pixels = self._cached(
                source,
                cfg.image.max_file_bytes,
                self._image_key,
                lambda c: decode_image(c, cfg.image),
                media,
                copy=not media.defer,
            )  # uint8 (H, W, C)
            if media.check:
                return CHECKED
            warp = generator if cfg.image.augment.enabled else None  # draws the augmentation, if any
            fill = self._image_fill
            if media.defer:
                height, width = pixels.shape[:2]
                draw = None if warp is None else draw_image_augment(height, width, cfg.image.augment, warp)
                return DeferredImage(pixels, draw, fill)
            image = image_to_tensor(pixels, cfg.image)  # (C, H, W)
            if warp is not None:
                image = augment_image(image, cfg.image.augment, warp, fill=fill)
            return image
        max_bytes = cfg.audio.max_file_bytes
        augment = cfg.audio.augment
        if media.check:
            # Validation fills what training reads: the wave too when augmentation starts from it.
            if self._wave_augment:
                wave = self._cached(
                    source, max_bytes, self._wave_key, lambda c: decode_audio(c, cfg.audio), media
                )
                self._cached(
                    source,
                    max_bytes,
                    self._audio_key,
                    lambda c: audio_features(torch.from_numpy(np.array(wave)), cfg.audio).numpy(),
                    media,
                )
            else:
                self._cached(source, max_bytes, self._audio_key, lambda c: _log_mel(c, cfg.audio), media)
            return CHECKED
        if generator is not None and self._wave_augment:
            wave = self._cached(
                source, max_bytes, self._wave_key, lambda c: decode_audio(c, cfg.audio), media
            )
            waveform = augment_waveform(torch.from_numpy(wave), augment, generator)
            if media.defer:
                n_frames = cfg.audio.n_frames(waveform.shape[0])
                return DeferredAudio(
                    waveform, draw_spec_masks(cfg.audio.feature_dim, n_frames, augment, generator)
                )
            features = audio_features(waveform, cfg.audio)
        else:
            features = torch.from_numpy(
                self._cached(source, max_bytes, self._audio_key, lambda c: _log_mel(c, cfg.audio), media)
            )  # (F, T)
        if generator is not None and augment.enabled:
            features = spec_augment(features, augment, generator)
        return features

    def _pretrained(self, name: str, source: MediaSource, media: _MediaRequest) -> Tensor:
        """An image or audio cell made into exactly what input `name`'s pretrained encoder reads."""
        spec = self.state.pretrained[name]
        cfg = self.state.config
        key = self._pretrained_keys[name]
        generator = media.generator
        if spec.family == "image":
            rgb = cfg.image.model_copy(update={"mode": "RGB"})  # every image backbone takes 3 channels
            pixels = self._cached(
                source,
                cfg.image.max_file_bytes,
                key,
                lambda c: image_pixels(decode_image(c, rgb, resize=False), spec),
                media,
            )
            if media.check:
                return CHECKED
            image = torch.from_numpy(pixels)  # (3, H, W)
            if generator is not None and cfg.image.augment.enabled:
                image = augment_image(image, cfg.image.augment, generator, fill=image_fill(spec))
            return image
        assert spec.family in AUDIO_FAMILIES
        # decoded and resampled to the extractor's rate, whatever audio.sample_rate says
        audio_cfg = cfg.audio.model_copy(update={"sample_rate": sampling_rate(spec), "f_max": None})
        augment = cfg.audio.augment
        if generator is not None and self._wave_augment:
            # Gain and noise act on the waveform, before the extractor; SpecAugment is polyfuse's own
            # log-mel augmentation and is not applied to a backbone's features.
            content = read_source_bytes(source, cfg.audio.max_file_bytes)
            wave = augment_waveform(torch.from_numpy(decode_audio(content, audio_cfg)), augment, generator)
            return torch.from_numpy(audio_values(wave.numpy(), spec))
        values = self._cached(
            source,
            cfg.audio.max_file_bytes,
            key,
            lambda c: audio_values(decode_audio(c, audio_cfg), spec),
            media,
        )  # (F, T)
        return CHECKED if media.check else torch.from_numpy(values)

    def _numeric(self, row: Mapping[str, Any], problems: list[Problem]) -> Tensor | None:
        values = []
        for column in self.numeric_columns:
            try:
                z = self.state.numeric[column].transform(row.get(column), self.state.config.numeric)
            except MediaError as e:
                problems.append(Problem(e.message, column=column, fix=e.fix, kind=e.kind))
                z = None
            values.append(float("nan") if z is None else z)
        if all(np.isnan(values)):
            return None
        return torch.tensor(values, dtype=torch.float32)  # (N,), NaN = missing value

    def _category(self, row: Mapping[str, Any]) -> Tensor | None:
        ids = [self.state.category[c].transform(row.get(c)) for c in self.category_columns]
        if not any(ids):
            return None
        return torch.tensor(ids, dtype=torch.long)  # (K,)

    def encode_targets(self, row: Mapping[str, Any]) -> dict[str, Tensor]:
        """Target column → tensor: long () class id, float () standardised value or float (L,) indicators.

        Raises MediaError naming the value when a label is missing or unseen in training.
        """
        out = {}
        for column, spec in self.state.targets.items():
            try:
                out[column] = encode_target(row.get(column), spec)
            except MediaError as e:
                raise DataError([Problem(e.message, column=column, fix=e.fix)]) from None
        return out

    def input_sizes(self) -> dict[str, int]:
        """Per-input numbers encoders need: channels, feature bins, vocabulary size, columns."""
        cfg = self.state.config
        sizes: dict[str, int] = {}
        for name, modality in self.inputs.items():
            spec = self.state.pretrained.get(name)
            if spec is not None and spec.family != "text":
                sizes[name] = 3 if spec.family == "image" else feature_rows(spec)
            elif modality is Modality.IMAGE:
                sizes[name] = 1 if cfg.image.mode == "L" else 3
            elif modality is Modality.AUDIO:
                sizes[name] = cfg.audio.feature_dim
            elif modality is Modality.TEXT:
                sizes[name] = len(self.tokenizer_of(name))
            elif modality is Modality.NUMERIC:
                sizes[name] = len(self.numeric_columns)
            else:
                sizes[name] = len(self.category_columns)
        return sizes

    def padding_values(self) -> dict[str, int]:
        """Token id used to pad each text input (its own tokenizer's)."""
        return {n: pad_token_id(self.tokenizer_of(n)) for n, m in self.inputs.items() if m is Modality.TEXT}


def fit_target(series: Any, column: str, task: TaskKind | None) -> TargetSpec:
    """Label map (or mean/std) from the training rows; the task is inferred when not given."""
    values = [v for v in series.tolist() if not is_missing(v)]
    if not values:
        raise DataError([Problem("target column has no values in the training rows", column=column)])
    if task is None:
        task = infer_task(values)
    if task == "regression":
        numbers = np.array([to_number(v) for v in values], dtype=np.float64)
        std = float(numbers.std())
        return TargetSpec(
            column=column, task=task, mean=float(numbers.mean()), std=std if std > 1e-12 else 1.0
        )
    if task == "multilabel":
        classes = sorted({label for v in values for label in split_labels(v)})
    else:
        classes = sorted({category_key(v) for v in values}, key=_natural_key)
    if len(classes) < 2 and task == "classification":
        raise DataError([Problem(f"target has a single class {classes} in training", column=column)])
    return TargetSpec(column=column, task=task, classes=classes)


def infer_task(values: list[Any]) -> TaskKind:
    if all(isinstance(v, list | tuple) for v in values[:100]) or any(
        isinstance(v, str) and MULTILABEL_SEPARATOR in v for v in values[:100]
    ):
        return "multilabel"
    floats = [v for v in values if isinstance(v, float)]
    if floats and any(not float(v).is_integer() for v in floats):
        return "regression"
    return "classification"


def split_labels(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [category_key(v) for v in value]
    return [p.strip() for p in str(value).split(MULTILABEL_SEPARATOR) if p.strip()]


def encode_target(value: Any, spec: TargetSpec) -> Tensor:
    # a multi-label cell may already be a list of labels; is_missing only judges scalars
    is_scalar = not isinstance(value, list | tuple)
    if is_scalar and is_missing(value):
        raise MediaError("label is missing", "fill the label or drop the row (--drop-invalid)")
    if spec.task == "regression":
        return torch.tensor((to_number(value) - spec.mean) / spec.std, dtype=torch.float32)
    index, class_ids = _class_ids(tuple(spec.classes))
    if spec.task == "multilabel":
        indicators = torch.zeros(len(spec.classes), dtype=torch.float32)
        for label in split_labels(value):
            if label not in index:
                raise MediaError(f"label '{label}' was not seen in training", f"known labels: {spec.classes}")
            indicators[index[label]] = 1.0
        return indicators
    key = category_key(value)
    if key not in index:
        raise MediaError(f"label '{key}' was not seen in training", f"known labels: {spec.classes[:20]}")
    return class_ids[index[key]]


@functools.lru_cache(maxsize=64)
def _class_ids(classes: tuple[str, ...]) -> tuple[dict[str, int], list[Tensor]]:
    """Class name → id, and each id as a long () tensor, made once per label set rather than per row.
    The tensors are shared: collation stacks them into new ones and nothing writes to them."""
    return {c: i for i, c in enumerate(classes)}, list(torch.arange(len(classes)).unbind())


def _natural_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
