"""The run config: data, encoders, fusion, heads and training, as one pydantic model.

One level of defaults (the field defaults here), then the YAML file, then CLI overrides. The resolved config
is printed when a run starts and saved with every checkpoint and model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polyfuse.data.errors import DataError, Problem
from polyfuse.data.prepare import DataConfig

CONFIG_VERSION = 1


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registry name, e.g. image.cnn, audio.cnn, text.minilm, text.hf")
    trainable: bool = Field(True, description="False freezes the encoder (its outputs are then cached)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="constructor arguments, e.g. {widths: [32, 64, 128]}"
    )


class FusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("gated", description="concat, gated, tensor, lowrank, cross_attention, transformer")
    output_dim: int = Field(256, ge=1, description="size of the fused vector the heads read")
    modality_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="chance of hiding each present input per row in training"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="fusion constructor arguments")


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_dim: int = Field(0, ge=0, description="0: a linear head; >0: one hidden layer of this size")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="'balanced' weighs classes by inverse training frequency (imbalanced labels)"
    )
    loss_weight: float = Field(1.0, gt=0.0, description="this target's weight in a multi-task loss")


class ObjectiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registry name: supervised, contrastive, matching")
    weight: float = Field(1.0, gt=0.0, description="this objective's weight in the summed training loss")
    options: dict[str, Any] = Field(
        default_factory=dict, description="constructor arguments, e.g. {embed_dim: 128, anchor: text}"
    )


def _default_objectives() -> list[ObjectiveConfig]:
    return [ObjectiveConfig(name="supervised")]


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of steps with linear warm-up")
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0, description="cosine decays to learning_rate × this")
    gradient_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; null disables")
    accumulate_grad_batches: int = Field(1, ge=1)
    early_stopping_patience: int | None = Field(
        5, ge=1, description="epochs without val improvement before stopping; null disables"
    )
    monitor: str = Field("val_loss", description="metric for early stopping and the best checkpoint")
    aux_loss_weight: float = Field(
        0.5,
        ge=0.0,
        description="weight of each input's auxiliary head (the input predicts the target alone, scored on "
        "the rows that have it) next to the fused head's 1; keeps every encoder as strong as a single-input "
        "model, so a row missing a modality is still predicted well and a noisy input cannot outvote a "
        "clear one; 0 disables",
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="keep an exponential moving average of the weights (and BatchNorm statistics), updated "
        "every optimizer step with this decay (e.g. 0.99: about the last 100 steps); validation, the best "
        "checkpoint and the saved model use the average; costs one more copy of the model in memory "
        "(frozen encoders included); null disables",
    )
    precision: Literal["32", "bf16-mixed", "16-mixed"] = Field(
        "32", description="bf16-mixed on GPUs; on CPUs without AMX bf16 runs slower than fp32"
    )
    accelerator: str = Field("auto", description="auto, cpu, gpu")
    devices: int | str = Field(1, description="number of devices (or 'auto'); >1 runs DDP")
    num_nodes: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    group_by_length: bool = Field(
        False,
        description="batch training rows of similar audio / text length together (less padding: faster "
        "epochs, less memory); batches are still shuffled",
    )
    cache_frozen_outputs: bool = Field(
        True, description="run each frozen encoder once per distinct input row, not once per epoch"
    )
    init_from: Path | None = Field(
        None,
        description="start from another model's encoder (and contrastive projection) weights, matched by "
        "input name: a model directory or a run folder (label-efficient fine-tuning after pretraining)",
    )
    seed: int = 0
    deterministic: bool = Field(
        True, description="deterministic kernels: identical reruns and resumes on CPU"
    )
    log_every_n_steps: int = Field(10, ge=1)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = CONFIG_VERSION
    data: DataConfig
    encoders: dict[str, EncoderConfig] = Field(
        default_factory=dict, description="input name → encoder (inputs not listed get the default)"
    )
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    heads: dict[str, HeadConfig] = Field(default_factory=dict, description="target → head settings")
    objectives: list[ObjectiveConfig] = Field(
        default_factory=_default_objectives,
        description="what the model learns, each loss weighted: supervised (a head per target), contrastive "
        "(a shared embedding space for its inputs), matching (a do-these-inputs-belong-together score)",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    def head(self, target: str) -> HeadConfig:
        return self.heads.get(target, HeadConfig())

    def objective(self, name: str) -> ObjectiveConfig | None:
        return next((o for o in self.objectives if o.name == name), None)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: Path | str, base_dir: Path | None = None) -> RunConfig:
    """Read and validate a YAML config; every error is reported at once, each naming its field.

    A relative `data.table` (and `training.init_from`) resolves against the config file's folder.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataError([Problem("config file not found", file=str(path))]) from None
    except yaml.YAMLError as e:
        raise DataError([Problem(f"invalid YAML: {e}", file=str(path))]) from None
    if not isinstance(raw, dict):
        raise DataError([Problem("the config must be a mapping of sections", file=str(path))])
    if raw.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise DataError(
            [
                Problem(
                    f"config version {raw.get('version')} is not supported (expected {CONFIG_VERSION})",
                    file=str(path),
                )
            ]
        )
    config = parse_config(raw, source=str(path))
    folder = base_dir or path.parent
    if not config.data.table.is_absolute():
        table = folder / config.data.table
        config = config.model_copy(update={"data": config.data.model_copy(update={"table": table})})
    source = config.training.init_from
    if source is not None and not source.is_absolute():
        training = config.training.model_copy(update={"init_from": folder / source})
        config = config.model_copy(update={"training": training})
    return config


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        problems = [
            Problem(
                f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}"
                + (
                    f" (got {err['input']!r})"
                    if err["type"] != "missing" and not isinstance(err["input"], dict)
                    else ""
                ),
                file=source,
            )
            for err in e.errors()
        ]
        raise DataError(problems) from None
