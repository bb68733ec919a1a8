"""polyfuse: multimodal models (text, image, audio, tabular) from one table.

The top-level import stays light: heavy modules (transformers, lightning) load only when used.
"""

from polyfuse.data.errors import DataError, MediaError, Problem
from polyfuse.data.schema import Modality, TableSchema
from polyfuse.data.table import Table, read_table

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "MediaError",
    "Modality",
    "Problem",
    "Table",
    "TableSchema",
    "__version__",
    "read_table",
]
