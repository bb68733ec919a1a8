"""Objectives: what a model learns. A registry of name → constructor(context, **options).

    objective = create_objective("contrastive", context, embed_dim=128)
    losses = objective.losses(output, batch)  # {"contrastive_image_audio_loss": ..., "loss": ...}

Each objective is one file; see `base.Objective` for the interface the training module, the run and the
Predictor rely on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from fnmatch import fnmatch
from typing import Any

from polyfuse.objectives.autoencoder import AutoencoderObjective
from polyfuse.objectives.base import Objective, ObjectiveContext
from polyfuse.objectives.contrastive import ContrastiveObjective
from polyfuse.objectives.matching import MatchingObjective
from polyfuse.objectives.supervised import SupervisedObjective
from polyfuse.objectives.vae import VAEObjective

# name -> constructor(context, **options); one line per objective
OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "contrastive": ContrastiveObjective,
    "matching": MatchingObjective,
    "supervised": SupervisedObjective,
    "autoencoder": AutoencoderObjective,
    "vae": VAEObjective,
}


def list_objectives(pattern: str = "*") -> list[str]:
    """Registered objective names matching a shell-style pattern, sorted."""
    return sorted(name for name in OBJECTIVES if fnmatch(name, pattern))


def objective_options(name: str) -> list[str]:
    return [p for p in inspect.signature(OBJECTIVES[name]).parameters if p != "context"]


def create_objective(name: str, context: ObjectiveContext, **options: Any) -> Objective:
    """Build the objective `name`; unknown names and options raise ValueError listing the choices."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choices: {', '.join(list_objectives())}")
    constructor = OBJECTIVES[name]
    try:
        inspect.signature(constructor).bind(context, **options)
    except TypeError as e:
        raise ValueError(
            f"objective {name!r}: {e}; its options are: {', '.join(objective_options(name))}"
        ) from e
    return constructor(context, **options)


__all__ = [
    "OBJECTIVES",
    "AutoencoderObjective",
    "ContrastiveObjective",
    "MatchingObjective",
    "Objective",
    "ObjectiveContext",
    "SupervisedObjective",
    "VAEObjective",
    "create_objective",
    "list_objectives",
]
