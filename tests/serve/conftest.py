"""A tiny model trained once per session through the real path (table → config → train → model dir)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from polyfuse.cli import app as cli_app
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


@pytest.fixture(scope="session")
def aligned_model(served_table: Path, small_config: Callable[..., RunConfig]) -> tuple[Path, Path]:
    """A contrastive + matching model (no supervised head) trained with `polyfuse train`, and its index of
    the same table built with `polyfuse index build`: (model dir, index dir)."""
    work = served_table.parent / "aligned"
    work.mkdir()
    config = work / "config.yaml"
    small_config(served_table, config, epochs=2, targets=(), objectives=("contrastive", "matching"))
    runner = CliRunner()
    trained = runner.invoke(cli_app, ["train", str(config), "-o", str(work / "run")])
    assert trained.exit_code == 0, trained.output
    model = work / "run" / "model"
    built = runner.invoke(
        cli_app, ["index", "build", str(model), str(served_table), "-o", str(work / "index")]
    )
    assert built.exit_code == 0, built.output
    return model, work / "index"
