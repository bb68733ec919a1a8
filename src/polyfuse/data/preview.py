"""`polyfuse data preview`: one collated batch, described."""

from __future__ import annotations

from pathlib import Path

from polyfuse.data.batch import Batch
from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.errors import DataError
from polyfuse.data.prepare import DataConfig, prepare_data, resolve_schema
from polyfuse.data.schema import Role
from polyfuse.data.splits import SplitConfig
from polyfuse.data.table import read_table
from polyfuse.presets import preprocessing_preset


def preview_batch(
    table: Path,
    *,
    overrides: dict[str, str] | None = None,
    targets: list[str] | None = None,
    preset: str | None = None,
    batch_size: int = 8,
    split: str = "train",
    augment: bool = False,
    show_progress: bool = False,
    encoding: str | None = None,
) -> list[str]:
    from polyfuse.init_config import suggest_preprocessing

    config = DataConfig(table=table, columns=overrides or {}, encoding=encoding)
    rows = read_table(table, encoding=encoding)
    schema = resolve_schema(rows, config)
    # The preset, or what `polyfuse init` would choose for this table.
    preprocessing = preprocessing_preset(preset) if preset else suggest_preprocessing(rows, schema)
    config = config.model_copy(update={"preprocessing": preprocessing})
    chosen = targets if targets else schema.columns_of(Role.LABEL)
    splits = schema.columns_of(Role.SPLIT)
    update: dict[str, object] = {"targets": {t: None for t in chosen}}
    if splits:
        update["split"] = SplitConfig(strategy="column", column=splits[0])
    prepared = prepare_data(config.model_copy(update=update), show_progress=show_progress)
    part = prepared.split(split)  # type: ignore[arg-type]
    if len(part) == 0:
        raise DataError(f"split '{split}' has no rows")
    dataset = MultimodalDataset(part, prepared.preprocessor, augment=augment)
    collate = make_collate(prepared.preprocessor)
    batch = collate([dataset[i] for i in range(min(batch_size, len(dataset)))])
    return describe_batch(batch)


def describe_batch(batch: Batch) -> list[str]:
    lines = [f"batch of {len(batch)} rows (table rows {batch.row_index.tolist()})"]
    for name, inputs in batch.inputs.items():
        values = inputs.values
        stats = ""
        if values.is_floating_point():
            stats = f" mean {values.mean().item():+.3f} std {values.std().item():.3f}"
        mask = ""
        if inputs.token_mask is not None:
            mask = (
                f", token_mask {tuple(inputs.token_mask.shape)} lengths {inputs.token_mask.sum(-1).tolist()}"
            )
        lines.append(
            f"  {name}: values {tuple(values.shape)} {str(values.dtype).removeprefix('torch.')}{stats}, "
            f"present {inputs.present.int().tolist()}{mask}"
        )
    for name, target in batch.targets.items():
        lines.append(f"  target {name}: {tuple(target.shape)} {target.tolist()}")
    return lines
