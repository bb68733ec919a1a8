"""Start a model from another one's encoders (label-efficient training: pretrain, then fine-tune).

Encoder weights are matched by input name; when both models align their inputs contrastively, the
projections into the shared space come along too. Heads, fusion and everything else start fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from polyfuse.data.errors import DataError, Problem
from polyfuse.models.model import MultimodalModel


def source_model_dir(source: Path) -> Path:
    """A model directory, or a run folder holding one under model/."""
    if (source / "model" / "polyfuse.json").exists():
        return source / "model"
    return source


def init_from(model: MultimodalModel, source: Path | str) -> list[str]:
    """Copy matching weights from the model at `source` into `model`; returns what was copied.

    Raises DataError naming the input and parameter when an input of the same name has another shape
    (another encoder or size), and when no input matches at all."""
    from polyfuse.artifact import load_model

    directory = source_model_dir(Path(source))
    donor = load_model(directory)[0]
    shared = [name for name in model.input_keys if name in donor.input_keys]
    if not shared:
        raise DataError(
            [
                Problem(
                    f"no input in common: this model's inputs are {sorted(model.input_keys)}, the source "
                    f"model's {sorted(donor.input_keys)}",
                    file=str(directory),
                    fix="init_from needs a model trained on inputs with the same column names",
                )
            ]
        )
    pairs: list[tuple[str, nn.Module, nn.Module]] = []
    for name in shared:
        pairs.append(
            (
                f"encoder '{name}'",
                model.encoders[model.input_keys[name]],
                donor.encoders[donor.input_keys[name]],
            )
        )
    if "contrastive" in model.objectives and "contrastive" in donor.objectives:
        ours: Any = model.objectives["contrastive"]
        theirs: Any = donor.objectives["contrastive"]
        for name in shared:
            key_ours, key_theirs = ours.keys.get(name), theirs.keys.get(name)
            if key_ours is not None and key_theirs is not None:
                pairs.append(
                    (
                        f"contrastive projection '{name}'",
                        ours.projections[key_ours],
                        theirs.projections[key_theirs],
                    )
                )
        if isinstance(ours.log_scale, nn.Parameter) and isinstance(theirs.log_scale, nn.Parameter):
            ours.log_scale.data.copy_(theirs.log_scale.data)  # a learned temperature comes along too
    problems = []
    for what, target, source_module in pairs:
        mine, given = target.state_dict(), source_module.state_dict()
        for key in sorted(set(mine) | set(given)):
            if key not in mine or key not in given or mine[key].shape != given[key].shape:
                problems.append(
                    Problem(
                        f"{what}: parameter '{key}' is {tuple(given[key].shape) if key in given else 'absent'} "
                        f"in the source model and {tuple(mine[key].shape) if key in mine else 'absent'} here",
                        file=str(directory),
                        fix="use the same encoder and options for this input as the source model",
                    )
                )
    if problems:
        raise DataError(problems)
    for _, target, source_module in pairs:
        target.load_state_dict(source_module.state_dict())
    for name in shared:
        # from here on these encoders are pretrained weights, like a Hugging Face backbone: the training
        # options for pretrained encoders (encoder_learning_rate, unfreeze_after_epochs) apply to them
        encoder: Any = model.encoders[model.input_keys[name]]
        encoder.pretrained_from = str(directory)
    return [what for what, _, _ in pairs]
