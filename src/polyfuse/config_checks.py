"""Config checks behind `polyfuse validate` and the start of every training run, beyond field types:
options that cannot build their encoder or fusion, and what the table must hold for the config to train.

Each problem names the config field at fault, so `validate` reports what `train` would otherwise fail on
with a traceback minutes later.
"""

from __future__ import annotations

from typing import Any

from polyfuse.config import RunConfig
from polyfuse.data.errors import DataError, Problem, did_you_mean
from polyfuse.data.prepare import draw_splits, effective_split
from polyfuse.data.schema import Modality, TableSchema
from polyfuse.data.splits import empty_split_problems
from polyfuse.data.table import Table

# Stand-ins for the sizes the fitted data gives a model; building on them catches bad option values.
_DUMMY_VOCAB = 64
_DUMMY_CARDINALITY = 4
_PRETRAINED_DIM = 384  # fusion input size assumed for encoders not built here (they load weights)

# Errors a constructor raises for option values it cannot use (ZeroDivisionError: e.g. num_heads 0).
_BUILD_ERRORS = (ValueError, TypeError, AssertionError, RuntimeError, ArithmeticError)


def _loads_pretrained(encoder_name: str) -> bool:
    """Building these reads a backbone's weights: too slow for a check, and their options are names."""
    return encoder_name.endswith(".hf") or encoder_name == "text.minilm"


def _data_sizes(config: RunConfig, schema: TableSchema | None) -> dict[str, Any]:
    prep = config.data.preprocessing
    numeric = len(schema.columns_of(Modality.NUMERIC)) if schema else 1
    category = len(schema.columns_of(Modality.CATEGORY)) if schema else 1
    return {
        "in_channels": 1 if prep.image.mode == "L" else 3,
        "n_mels": prep.audio.n_mfcc if prep.audio.feature == "mfcc" else prep.audio.n_mels,
        "vocab_size": _DUMMY_VOCAB,
        "num_features": max(numeric, 1),
        "cardinalities": [_DUMMY_CARDINALITY] * max(category, 1),
    }


def build_problems(
    config: RunConfig, inputs: dict[str, Modality], schema: TableSchema | None
) -> list[Problem]:
    """Build each configured encoder (on dummy data sizes) and the fusion over them with the config's
    options; a value the constructor rejects becomes a problem naming the field.

    `inputs`: input name → modality, of the table (or as the config's encoder names say without one).
    Entries with an unknown registry name or option key are skipped: `check_config` reports those."""
    import inspect

    from polyfuse.models.encoders import DEFAULT_ENCODERS, ENCODERS
    from polyfuse.models.fusion import FUSIONS, create_fusion
    from polyfuse.models.model import module_key

    problems: list[Problem] = []
    sizes = _data_sizes(config, schema)
    dims: dict[str, int] = {}
    for name, modality in inputs.items():
        chosen = config.encoders.get(name)
        encoder_name = chosen.name if chosen else DEFAULT_ENCODERS[modality.value]
        constructor = ENCODERS.get(encoder_name)
        if constructor is None:
            continue
        if _loads_pretrained(encoder_name):
            dims[name] = _PRETRAINED_DIM
            continue
        parameters = inspect.signature(constructor).parameters
        options = dict(chosen.options) if chosen else {}
        if any(key not in parameters for key in options):
            continue
        kwargs = {k: v for k, v in sizes.items() if k in parameters} | options
        try:
            encoder = constructor(**kwargs)
            dims[name] = int(encoder.output_dim)
        except _BUILD_ERRORS as e:
            problems.append(
                Problem(
                    f"field 'encoders.{name}.options': {encoder_name} cannot be built with {options}: {e}"
                )
            )
    fusion = FUSIONS.get(config.fusion.name)
    options = config.fusion.options
    if fusion is not None and dims and all(k in inspect.signature(fusion).parameters for k in options):
        try:
            create_fusion(
                config.fusion.name,
                {module_key(n): d for n, d in dims.items()},
                config.fusion.output_dim,
                modality_dropout=config.fusion.modality_dropout,
                **options,
            )
        except _BUILD_ERRORS as e:
            problems.append(
                Problem(
                    f"field 'fusion.options': {config.fusion.name} cannot be built with {dict(options)}: {e}"
                )
            )
    return problems


def table_problems(config: RunConfig, table: Table, schema: TableSchema) -> list[Problem]:
    """What the table must hold for this config to train: inputs, target values, a valid split with rows in
    every split the config asks for. Row-level problems (unreadable files, bad values) are `data inspect`'s
    and training's own first step."""
    problems: list[Problem] = []
    if not schema.input_columns():
        kinds = ", ".join(f"{c.name}: {c.kind.value}" for c in schema.columns)
        problems.append(
            Problem(
                f"field 'data.columns': the table has no input columns ({kinds})",
                fix="set column kinds under data.columns, e.g. review: text",
            )
        )
    for target in config.data.targets:
        if target in table.frame.columns and table.frame[target].isna().all():
            problems.append(Problem(f"field 'data.targets': column '{target}' has no values"))
    try:
        splits = draw_splits(table, config.data, schema)
    except DataError as e:
        return problems + [_under("data.split", p) for p in e.problems]
    empty = empty_split_problems(splits, effective_split(config.data, schema))
    return problems + [_under("data.split", p) for p in empty]


def _under(field: str, problem: Problem) -> Problem:
    return Problem(
        f"field '{field}': {problem.message}", problem.row, problem.column, problem.file, problem.fix
    )


def unknown_column_problem(field: str, column: str, columns: list[str], what: str = "column") -> Problem:
    return Problem(
        f"field '{field}': {what} '{column}' is not in the table{did_you_mean(column, columns)}; "
        f"columns: {', '.join(columns)}"
    )
