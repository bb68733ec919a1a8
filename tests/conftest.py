"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (MNIST + FSDD); skips when it is missing, but fails in CI, where it must be."""
    # Imported here so that a broken datasets package fails only the tests that need real data.
    from polyfuse.data.datasets import default_data_dir

    root = default_data_dir()
    needed = [
        root / "mnist" / "t10k-images-idx3-ubyte.gz",
        root / "mnist" / "t10k-labels-idx1-ubyte.gz",
        root / "fsdd" / "recordings",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        reason = (
            f"real data not found: {', '.join(missing)}. Put it at ../shared/data beside the project or set "
            "POLYFUSE_DATA to the folder holding mnist/ and fsdd/ (see shared/data/README.md)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return root
