"""Table in → schema, splits, fitted preprocessing and a validation report: everything before training."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from polyfuse.data.cache import FeatureCache, default_cache_dir
from polyfuse.data.decode_pool import usable_cores
from polyfuse.data.errors import DataError, Problem
from polyfuse.data.infer import infer_schema
from polyfuse.data.modalities.pretrained import PretrainedInput
from polyfuse.data.preprocess import PreprocessingConfig, Preprocessor, TaskKind
from polyfuse.data.schema import Modality, Role, TableSchema
from polyfuse.data.splits import SplitConfig, assign_splits
from polyfuse.data.table import Table, read_table
from polyfuse.data.validate import DEFAULT_FILE_TIME_LIMIT_S, ValidationReport, check_ids, validate_rows
from polyfuse.gc_freeze import long_lived_objects_frozen
from polyfuse.progress import progress_bar

SplitName = Literal["train", "val", "test"]


class DataConfig(BaseModel):
    """Where the table is and how to read, split and preprocess it."""

    model_config = ConfigDict(extra="forbid")

    table: Path = Field(
        description="CSV, TSV, JSONL or Parquet; relative media paths resolve from its folder"
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="column → kind overrides (text, image, audio, numeric, category, id, label, split, "
        "group, ignore); other columns are inferred",
    )
    targets: dict[str, TaskKind | None] = Field(
        default_factory=dict,
        description="target column → task (classification, multilabel, regression; null infers it)",
    )
    encoding: str | None = Field(
        None, description="text encoding of a CSV/TSV/JSONL table, e.g. cp1252; null: UTF-8 (BOMs honoured)"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    cache_dir: Path | None = Field(
        None,
        description="feature cache; default $POLYFUSE_CACHE_DIR or ~/.cache/polyfuse, never the data folder",
    )
    use_cache: bool = True
    workers: int | None = Field(
        None,
        ge=0,
        description="processes that decode and featurise the rows on the first pass; null: one per usable "
        "core; 0: in the calling process, without a time limit per file",
    )
    decode_timeout_s: float = Field(
        DEFAULT_FILE_TIME_LIMIT_S,
        gt=0,
        description="a file whose decoding takes longer is stopped and reported as its row's problem "
        "(with workers >= 1)",
    )
    drop_invalid: bool = Field(
        False, description="drop rows with problems (and report how many) instead of failing"
    )


@dataclass
class PreparedData:
    table: Table  # valid rows only, renumbered
    schema: TableSchema
    splits: pd.Series  # 'train' / 'val' / 'test' per row of `table`
    preprocessor: Preprocessor
    report: ValidationReport  # problems found, with row numbers of the table as read
    dropped_rows: list[int]  # rows of the table as read that --drop-invalid removed

    def split(self, name: SplitName) -> Table:
        return self.table.subset(list(self.splits.index[self.splits == name]))


def resolve_schema(table: Table, config: DataConfig) -> TableSchema:
    """The inferred schema with overrides, targets forced to the label role (never an input)."""
    overrides = dict(config.columns)
    for target in config.targets:
        overrides.setdefault(target, Role.LABEL.value)
    if config.split.strategy == "column" and config.split.column in table.frame.columns:
        overrides.setdefault(config.split.column, Role.SPLIT.value)
    if config.split.group:
        overrides.setdefault(config.split.group, Role.GROUP.value)
    return infer_schema(table, overrides)


def effective_split(config: DataConfig, schema: TableSchema) -> SplitConfig:
    """The split config a run uses: left at its defaults, it follows the table's own split column."""
    split_columns = schema.columns_of(Role.SPLIT)
    if config.split == SplitConfig() and split_columns:
        return SplitConfig(strategy="column", column=split_columns[0])
    return config.split


def draw_splits(table: Table, config: DataConfig, schema: TableSchema) -> pd.Series:
    """'train' / 'val' / 'test' per row of the table as read (before any row is dropped), so the same
    table and config always give the same assignment: `evaluate --split test` can redraw it."""
    first_target = next(iter(config.targets), None)
    return assign_splits(table.frame, effective_split(config, schema), default_stratify=first_target)


def prepare_data(
    config: DataConfig,
    *,
    show_progress: bool = True,
    validate: bool = True,
    pretrained: Callable[[Mapping[str, Modality]], Mapping[str, PretrainedInput]] | None = None,
) -> PreparedData:
    """Read, infer, split, fit on train, validate every row; raise DataError listing every problem unless
    `config.drop_invalid`, which drops the bad rows instead. `pretrained` maps the table's inputs (name →
    modality) to the preprocessing their pretrained encoders carry."""
    table = read_table(config.table, encoding=config.encoding)
    schema = resolve_schema(table, config)
    if not schema.input_columns():
        raise DataError(
            [
                Problem(
                    "no input columns found",
                    file=str(config.table),
                    fix="set column kinds under data.columns",
                )
            ]
        )
    missing = [t for t in config.targets if t not in table.frame.columns]
    if missing:
        raise DataError(
            [Problem(f"target not found; columns: {list(table.frame.columns)}", column=t) for t in missing]
        )
    splits = draw_splits(table, config, schema)
    cache = FeatureCache((config.cache_dir or default_cache_dir()) if config.use_cache else None)

    problems = []
    ids = schema.columns_of(Role.ID)
    problems += check_ids(table, ids[0] if ids else None)
    train_rows = list(splits.index[splits == "train"])
    if not train_rows:
        raise DataError([Problem("the training split is empty", fix="check the split column or fractions")])
    specs = pretrained(schema.input_names()) if pretrained is not None else {}
    preprocessor = Preprocessor.fit(
        table.subset(train_rows), schema, config.preprocessing, config.targets, cache=cache, pretrained=specs
    )
    report = ValidationReport(problems=problems)
    if validate:
        with (
            progress_bar("validating and featurising", total=len(table), enabled=show_progress) as advance,
            long_lived_objects_frozen(),
        ):
            rows_report = validate_rows(
                table,
                preprocessor,
                progress=advance,
                workers=usable_cores() if config.workers is None else config.workers,
                file_time_limit_s=config.decode_timeout_s,
            )
        cache.compact()  # a few packs, not one per entry a previous run computed alone
        report.problems += rows_report.problems
        report.rows_checked = rows_report.rows_checked
    bad = report.invalid_rows
    if report.problems and not config.drop_invalid:
        raise DataError(report.problems)
    if any(p.row is None for p in report.problems):
        raise DataError([p for p in report.problems if p.row is None])
    keep = [r for r in range(len(table)) if r not in set(bad)]
    if bad:
        table, splits = table.subset(keep), splits.iloc[keep].reset_index(drop=True)
        # Statistics must not see dropped rows: refit on the remaining training rows.
        train_rows = list(splits.index[splits == "train"])
        preprocessor = Preprocessor.fit(
            table.subset(train_rows),
            schema,
            config.preprocessing,
            config.targets,
            cache=cache,
            pretrained=specs,
        )
    return PreparedData(table, schema, splits, preprocessor, report, bad)
