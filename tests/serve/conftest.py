"""A tiny model trained once per session through the real path (table → config → train → model dir)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from polyfuse.config import RunConfig
from polyfuse.data.datasets import make_synthetic_table
from polyfuse.serve import ServeSettings, create_app
from polyfuse.serve.engine import Engine
from polyfuse.training.run import train


@pytest.fixture(scope="session")
def served_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_table(tmp_path_factory.mktemp("served"), n_rows=80, seed=1)


@pytest.fixture(scope="session")
def model_dir(served_table: Path, small_config: Callable[..., RunConfig]) -> Path:
    config = small_config(served_table, served_table.parent / "config.yaml", epochs=2)
    result = train(config, served_table.parent / "run", show_progress=False, log=lambda *_: None)
    return result.model_dir


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> Engine:
    return Engine(model_dir, ServeSettings().limits)


@pytest.fixture(scope="module")
def client(model_dir: Path, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(model_dir, ServeSettings(), engine)) as test_client:
        yield test_client
