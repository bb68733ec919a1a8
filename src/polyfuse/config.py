"""The run config: data, encoders, fusion, heads and training, as one pydantic model.

One level of defaults (the field defaults here), then the YAML file, then CLI overrides. The resolved config
is printed when a run starts and saved with every checkpoint and model.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polyfuse.data.errors import DataError, Problem, did_you_mean
from polyfuse.data.prepare import DataConfig

CONFIG_VERSION = 1


AdapterMethod = Literal["lora", "ia3", "bitfit", "norm", "bottleneck"]


class AdapterConfig(BaseModel):
    """Parameter-efficient fine-tuning of an encoder; see polyfuse.models.adapters."""

    model_config = ConfigDict(extra="forbid")

    method: AdapterMethod = Field(description="lora, ia3, bitfit, norm or bottleneck")
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling: updates are multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] | None = Field(
        None, description="module names (suffixes) LoRA / IA3 adapt; default: per model family"
    )
    bottleneck_dim: int = Field(64, ge=1, description="inner size of a bottleneck adapter")
    merge: bool = Field(
        True,
        description="LoRA / IA3: merge into the backbone before saving (a plain backbone in the model); "
        "false saves base + adapter and loads both",
    )
    path: str | None = Field(None, description="a saved peft adapter folder to load (set by the artifact)")


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registry name, e.g. image.cnn, audio.cnn, text.minilm, text.hf")
    trainable: bool = Field(True, description="False freezes the encoder (its outputs are then cached)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="constructor arguments, e.g. {widths: [32, 64, 128]}"
    )
    adapter: AdapterConfig | None = Field(
        None, description="parameter-efficient fine-tuning: {method: lora | ia3 | bitfit | norm | bottleneck}"
    )
    learning_rate: float | None = Field(
        None, gt=0.0, description="this encoder's learning rate (default: training.encoder_learning_rate)"
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
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field(
        "auto",
        description="auto: bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX), where it trains "
        "the CNN encoders about 2x faster, if the run's objectives, encoders and fusion were all checked in "
        "bf16 (supervised; image.cnn, audio.cnn; every fusion); fp32 elsewhere and on GPUs. bf16-mixed "
        "forces bf16 autocast; on CPUs without native bf16 it runs slower than fp32",
    )
    accelerator: str = Field("auto", description="auto, cpu, gpu")
    devices: int | str = Field(1, description="number of devices (or 'auto'); >1 runs DDP")
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="how several devices / processes share the work (Lightning's): ddp replicates the model "
        "and averages gradients; fsdp shards parameters, gradients and optimizer state; auto = ddp when "
        "devices x nodes > 1",
    )
    find_unused_parameters: bool = Field(
        True,
        description="DDP looks for parameters that got no gradient in a step (an unused head, a backbone "
        "part a modality never reaches) instead of failing on them; false saves a graph walk per step when "
        "every parameter is used",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    group_by_length: bool = Field(
        False,
        description="batch training rows of similar audio / text length together (less padding: faster "
        "epochs, less memory); batches are still shuffled",
    )
    length_group_batches: int = Field(
        50,
        ge=1,
        description="with group_by_length: rows are sorted by length within random groups of this many "
        "batches; fewer gives batches less tied to length (where length follows the label) but more padding",
    )
    trim_heap_on_growth: float | None = Field(
        0.05,
        gt=0.0,
        description="on Linux (glibc), give malloc's free pages back to the system at the end of a training "
        "step when the process's resident memory is more than this fraction above its highest at a step's "
        "end in the first epoch: activations of changing shapes then do not pile up in the heap (an fp32 "
        "AV-Digits run grows to 1.32-1.35 GB without), and runs whose heap does not grow pay nothing; null "
        "never",
    )
    trim_heap_every_n_steps: int | None = Field(
        None,
        ge=1,
        description="on Linux (glibc), give malloc's free pages back to the system every this many training "
        "steps, whether or not the heap grew (the default before trim_heap_on_growth: 4; each trim costs the "
        "next step faulting its pages in again, 7-12 % of the time with 4); null: not on a fixed cadence",
    )
    mmap_threshold_mb: float | None = Field(
        None,
        gt=0.0,
        le=32.0,
        description="on Linux (glibc), buffers of at least this many MiB are mapped on their own and given "
        "back to the system when freed, so activations of changing shapes do not pile up in the heap; "
        "process-wide. A memory-for-time trade: with 4, AV-Digits training peaks at 1.2 instead of 1.7 GB "
        "but each epoch takes 1.75x as long (the pages of every large buffer are faulted in afresh); null "
        "leaves malloc as it is",
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
    encoder_learning_rate: float | None = Field(
        None,
        gt=0.0,
        description="learning rate of pretrained encoders (Hugging Face backbones, and encoders copied by "
        "init_from); new layers (fusion, heads, adapters, from-scratch encoders) use learning_rate; null: "
        "learning_rate for all",
    )
    layer_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="layer-wise learning-rate decay in pretrained encoders: layer l of L trains at "
        "rate x decay^(L - l), the embeddings at x decay^(L + 1); 1 disables",
    )
    unfreeze_after_epochs: int | None = Field(
        None,
        ge=1,
        description="gradual unfreezing: pretrained encoders (as for encoder_learning_rate) stay frozen "
        "(heads and adapters train) for this many epochs, then train too; null: from the start. "
        "Single-process only (DDP fixes the set of trained parameters)",
    )


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
    config, problems = read_config(path, base_dir)
    if problems or config is None:
        raise DataError(problems)
    return config


def read_config(path: Path | str, base_dir: Path | None = None) -> tuple[RunConfig | None, list[Problem]]:
    """The config file's problems, and the config with the faulty fields left at their defaults (None when
    a required part is missing), so the checks behind it can still run: `polyfuse validate` then reports
    every mistake in one pass, not the field errors first and the rest after they are fixed."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None, [Problem("config file not found", file=str(path))]
    except yaml.YAMLError as e:
        return None, [Problem(f"invalid YAML: {e}", file=str(path))]
    if not isinstance(raw, dict):
        return None, [Problem("the config must be a mapping of sections", file=str(path))]
    if raw.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        return None, [
            Problem(
                f"config version {raw.get('version')} is not supported (expected {CONFIG_VERSION})",
                file=str(path),
            )
        ]
    config, problems = parse_config_leniently(raw, source=str(path))
    if config is not None and not config.data.table.is_absolute():
        # Absolute from here on: the run's saved config then names the table wherever it is run from, and
        # `evaluate --split test` can tell the training table from another.
        table = ((base_dir or path.parent) / config.data.table).absolute()
        config = config.model_copy(update={"data": config.data.model_copy(update={"table": table})})
    source = config.training.init_from if config is not None else None
    if config is not None and source is not None and not source.is_absolute():
        training = config.training.model_copy(
            update={"init_from": ((base_dir or path.parent) / source).absolute()}
        )
        config = config.model_copy(update={"training": training})
    return config, problems


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    config, problems = parse_config_leniently(raw, source)
    if problems or config is None:
        raise DataError(problems)
    return config


def parse_config_leniently(
    raw: dict[str, Any], source: str = "config"
) -> tuple[RunConfig | None, list[Problem]]:
    """Every field error of `raw`, and a config parsed from what is left once the faulty entries are
    removed (their defaults apply), or None when that leaves a required field missing."""
    try:
        return RunConfig.model_validate(raw), []
    except ValidationError as e:
        errors = e.errors()
    problems = _field_problems(errors, source)
    salvaged = copy.deepcopy(raw)
    for _ in range(MAX_SALVAGE_ROUNDS):
        removed = False
        for err in errors:
            # A missing field cannot be dropped; drop the entry that lacks it.
            loc = err["loc"][:-1] if err["type"] == "missing" else err["loc"]
            removed |= _remove(salvaged, loc)
        if not removed:
            return None, problems
        try:
            return RunConfig.model_validate(salvaged), problems
        except ValidationError as e:
            errors = e.errors()
    return None, problems


MAX_SALVAGE_ROUNDS = 5


def _remove(raw: Any, loc: tuple[int | str, ...]) -> bool:
    """Delete the deepest mapping entry on the path `loc` (pydantic adds steps such as union members
    that are not keys; those end the walk)."""
    parent, key = None, None
    node = raw
    for step in loc:
        if not isinstance(node, dict) or step not in node:
            break
        parent, key, node = node, step, node[step]
    if parent is None:
        return False
    del parent[key]
    return True


def _field_problems(errors: list[Any], source: str) -> list[Problem]:
    """One problem per field: a value that fits none of a union's types (`devices: int | str`) comes
    from pydantic as one error per type, with the type's name as a last step of its location."""
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        if len(loc) > 1 and isinstance(loc[-1], str) and _UNION_MEMBER.match(loc[-1]):
            loc = loc[:-1]
        merged.setdefault(loc, []).append(err)
    problems = []
    for loc, group in merged.items():
        err = group[0]
        message = " or ".join([err["msg"], *(e["msg"].removeprefix("Input should be ") for e in group[1:])])
        if err["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            hint = did_you_mean(str(loc[-1]), known)
            message = "not a field" + (hint or f"; fields here: {', '.join(known)}")
        elif err["type"] != "missing" and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        problems.append(Problem(f"field '{'.'.join(map(str, loc))}': {message}", file=source))
    return problems


# pydantic's step for a union member: a type name such as int, str, list[int], literal['a','b']
_UNION_MEMBER = re.compile(r"^(int|str|float|bool|none|[a-z_]+\[.*\])$")


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the config section at `loc` (dict-valued fields such as `encoders` skip a key)."""
    node: Any = RunConfig
    for step in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(step))
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []
