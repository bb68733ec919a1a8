"""polyfuse: multimodal models (text, image, audio, tabular) from one table.

The top-level import stays light: training (Lightning) and Hugging Face code load only when used.

    config = polyfuse.load_config("config.yaml")
    result = polyfuse.train(config, "runs/first")
    predictor = polyfuse.load("runs/first/model")
    predictor.predict([{"image": "a.png", "audio": "a.wav"}])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polyfuse.data.errors import DataError, MediaError, Problem
from polyfuse.data.schema import Modality, TableSchema
from polyfuse.data.table import Table, read_table

__version__ = "0.1.0"

if TYPE_CHECKING:
    from polyfuse.config import RunConfig, load_config
    from polyfuse.predict import Predictor, load
    from polyfuse.training.run import TrainResult, train

_LAZY = {
    "RunConfig": "polyfuse.config",
    "load_config": "polyfuse.config",
    "Predictor": "polyfuse.predict",
    "load": "polyfuse.predict",
    "TrainResult": "polyfuse.training.run",
    "train": "polyfuse.training.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'polyfuse' has no attribute {name!r}")


__all__ = [
    "DataError",
    "MediaError",
    "Modality",
    "Predictor",
    "Problem",
    "RunConfig",
    "Table",
    "TableSchema",
    "TrainResult",
    "__version__",
    "load",
    "load_config",
    "read_table",
    "train",
]
