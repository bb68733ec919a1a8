"""Shared fixtures: the real data folder, and a small synthetic tri-modal table with a fast config over it
(used by the training and serving tests)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from polyfuse.config import EncoderConfig, RunConfig
from polyfuse.data.datasets import make_synthetic_table
from polyfuse.init_config import init_config


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


SMALL_ENCODERS = {
    "image": EncoderConfig(name="image.cnn", options={"widths": [8, 16], "blocks_per_stage": 1}),
    "audio": EncoderConfig(name="audio.cnn", options={"widths": [8, 16]}),
    "text": EncoderConfig(name="text.bigru", options={"embed_dim": 16, "hidden_size": 16}),
    "numeric": EncoderConfig(name="numeric.mlp", options={"hidden_dim": 16, "output_dim": 16}),
    "category": EncoderConfig(name="category.embedding", options={"output_dim": 8}),
}


@pytest.fixture(scope="session")
def small_encoders() -> dict[str, EncoderConfig]:
    """SMALL_ENCODERS, for tests that edit a config `polyfuse init` wrote (test modules are not a package,
    so they cannot import it from here)."""
    return SMALL_ENCODERS


@pytest.fixture(scope="session")
def synthetic_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_table(tmp_path_factory.mktemp("synthetic"), n_rows=240, seed=0)


SmallConfig = Callable[..., RunConfig]


@pytest.fixture(scope="session")
def small_config() -> SmallConfig:
    return make_small_config


def make_small_config(
    table: Path,
    config_path: Path,
    epochs: int = 3,
    fusion: str = "gated",
    targets: tuple[str, ...] = ("label",),
    objectives: tuple[str, ...] = ("supervised",),
) -> RunConfig:
    """`polyfuse init`'s config with tiny encoders, so a run takes seconds."""
    config = init_config(
        table, list(targets), config_path, fusion=fusion, objectives=list(objectives), probe=False
    )
    config = config.model_copy(
        update={
            "encoders": {name: SMALL_ENCODERS[name] for name in config.encoders},
            "training": config.training.model_copy(
                update={
                    "epochs": epochs,
                    "batch_size": 16,
                    "learning_rate": 5e-3,
                    "early_stopping_patience": None,
                }
            ),
            "fusion": config.fusion.model_copy(update={"output_dim": 32}),
            "data": config.data.model_copy(update={"cache_dir": config_path.parent / "cache"}),
        }
    )
    config_path.write_text(config.to_yaml())
    return config
