"""Datasets built from public sources (AV-Digits) or generated (a synthetic multimodal table).

Nothing here downloads anything: builders read files the user already has and write a plain table
(CSV + media files) that the rest of polyfuse reads like any user's data.
"""

from __future__ import annotations

import os
from pathlib import Path

from polyfuse.data.datasets.avdigits import build_av_digits, locate_sources, read_idx
from polyfuse.data.datasets.complementary import build_digit_questions, build_spoken_vs_written
from polyfuse.data.datasets.synthetic import make_synthetic_table

__all__ = [
    "build_av_digits",
    "build_digit_questions",
    "build_spoken_vs_written",
    "default_data_dir",
    "locate_sources",
    "make_synthetic_table",
    "read_idx",
]


def default_data_dir() -> Path:
    """Where the real data (MNIST, FSDD) lives: $POLYFUSE_DATA, else `../shared/data` beside the project.

    The project root is the first folder above this file that holds a pyproject.toml (the source tree of an
    editable install), else the current directory (an installed wheel has no project root of its own).
    """
    env = os.environ.get("POLYFUSE_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return _project_root().parent / "shared" / "data"


def _project_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd().resolve()
