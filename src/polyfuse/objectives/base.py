"""What every objective is, and what it is built from.

An objective owns its heads / projections (modules inside the model, so they are trained, checkpointed and
saved in the artifact with everything else), turns a `ModelOutput` into named losses, scores a split, and
says which Predictor calls it makes possible. The Lightning module, the run and the Predictor only go
through this interface: a new objective is one file and one registry line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from torch import Tensor, nn

from polyfuse.data.preprocess import TargetSpec
from polyfuse.data.schema import Modality

if TYPE_CHECKING:
    from polyfuse.config import RunConfig
    from polyfuse.data.batch import Batch
    from polyfuse.data.preprocess import Preprocessor
    from polyfuse.data.table import Table
    from polyfuse.models.model import ModelOutput


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may read when it is built: sizes and specs, never data."""

    inputs: dict[str, Modality]  # input name → modality, sorted by name
    input_dims: dict[str, int]  # input name → pooled encoder width D_m
    fused_dim: int  # width of the fused vector (B, D)
    targets: dict[str, TargetSpec]  # label columns of the table (data.targets), fitted on train
    config: RunConfig
    # the fitted preprocessing (sizes of what decoders rebuild: columns, vocabularies, audio settings);
    # None where an objective is built on dummy sizes to check its options
    preprocessor: Preprocessor | None = None


class Objective(Protocol):
    """The interface of an objective module (an nn.Module).

    needs_fusion:   True when `losses` / `infer` read `output.fused`; the model builds a fusion only if
                    some objective needs one.
    capabilities:   Predictor calls it enables: "predict", "embed", "search", "zero_shot", "consistency",
                    "generate", "anomaly".
    trains_in_bf16: True once the objective's results were checked under bf16 autocast: then
                    `training.precision: auto` may train it in bf16 (see training.precision).
    losses:         named scalar losses; the key "loss" is this objective's total (logged as
                    "<name>_loss" and weighted into the run's "loss"), other keys are logged as they are.
    step_metrics:   cheap per-batch validation metrics (logged as val_<key>, averaged over batches).
    infer:          per-row outputs a Predictor call needs, keyed by name (first dimension B).
    eval_rows:      per-row tensors for scoring a split; concatenated over batches and given to `score`.
    score:          metrics for a split from the concatenated `eval_rows`: {section: {metric: value}}.
    fit_data:       called once before training with the training rows (e.g. class weights).

    Optional: `calibrate(rows)`, called once after training with the `eval_rows` of the validation split
    (e.g. an anomaly threshold at a chosen false-alarm rate, kept in a buffer so it is saved with the model).
    """

    name: ClassVar[str]
    needs_fusion: ClassVar[bool]
    capabilities: ClassVar[tuple[str, ...]]
    trains_in_bf16: ClassVar[bool]

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]: ...

    def step_metrics(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]: ...

    def infer(self, output: ModelOutput) -> dict[str, Tensor]: ...

    def eval_rows(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]: ...

    def score(self, rows: dict[str, Tensor]) -> dict[str, Any]: ...

    def fit_data(self, train: Table, preprocessor: Preprocessor) -> None: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def select_inputs(
    objective: str, context: ObjectiveContext, inputs: list[str] | None, minimum: int
) -> list[str]:
    """The objective's inputs, checked to exist, sorted. Not given: the text, image and audio inputs when
    there are at least `minimum` of them (aligning a table's numeric block with its images is rarely what
    is meant), else every input."""
    media = [n for n, m in context.inputs.items() if m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)]
    default = media if len(media) >= minimum else list(context.inputs)
    chosen = sorted(inputs) if inputs is not None else default
    unknown = [n for n in chosen if n not in context.inputs]
    if unknown:
        raise ValueError(
            f"{objective}: unknown input(s) {unknown}; the table's inputs are {list(context.inputs)}"
        )
    if len(set(chosen)) < minimum:
        raise ValueError(
            f"{objective} needs at least {minimum} inputs, got {chosen}; the table's inputs are "
            f"{list(context.inputs)}"
        )
    return chosen


def label_target(objective: str, context: ObjectiveContext, label_column: str | None) -> str | None:
    """A classification target used for label-aware positives / class-level metrics, checked."""
    if label_column is None:
        return None
    spec = context.targets.get(label_column)
    if spec is None:
        raise ValueError(
            f"{objective}: label_column '{label_column}' must be listed under data.targets; "
            f"targets: {list(context.targets)}"
        )
    if spec.task != "classification":
        raise ValueError(f"{objective}: label_column '{label_column}' must be a classification target")
    return label_column
