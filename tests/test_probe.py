"""The input probe `polyfuse init` runs: each input's own predictive power, and the setup chosen from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from polyfuse.cli import app
from polyfuse.config import load_config
from polyfuse.data.infer import infer_schema
from polyfuse.data.preprocess import PreprocessingConfig
from polyfuse.data.table import read_table
from polyfuse.probe import REDUNDANT_SKILL, probe_inputs

runner = CliRunner()


def _xor_table(tmp_path: Path, rows: int = 400) -> Path:
    """label = colour XOR shape: each column alone is a coin flip, both together decide it; `copy` (text)
    repeats the label in words in the redundant variant."""
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 2, rows)
    shape = rng.integers(0, 2, rows)
    label = colour ^ shape
    frame = pd.DataFrame(
        {
            "colour": np.where(colour == 1, "red", "blue"),
            "shape": np.where(shape == 1, "square", "circle"),
            "note": [f"item number {i}" for i in range(rows)],
            "label": np.where(label == 1, "yes", "no"),
        }
    )
    path = tmp_path / "xor.csv"
    frame.to_csv(path, index=False)
    return path


def test_probe_measures_each_input_alone(tmp_path: Path) -> None:
    path = _xor_table(tmp_path)
    table = read_table(path)
    schema = infer_schema(table, {"label": "label", "colour": "category", "shape": "text", "note": "text"})
    probe = probe_inputs(table, schema, "label", PreprocessingConfig())
    assert probe is not None and probe.rows == 400
    assert set(probe.accuracy) == {"category", "note", "shape"}
    assert all(skill < 0.2 for skill in probe.skill.values()), probe  # no input alone beats a coin
    assert probe.complementary

    frame = pd.read_csv(path)
    frame["note"] = "the answer is " + frame["label"]  # now one input names the label
    frame.to_csv(path, index=False)
    table = read_table(path)
    probe = probe_inputs(table, schema, "label", PreprocessingConfig())
    assert probe is not None and probe.skill["note"] > 0.95 > REDUNDANT_SKILL
    assert not probe.complementary
    assert "note 1.00" in probe.summary()


def test_probe_declines_with_too_few_labelled_rows(tmp_path: Path) -> None:
    path = _xor_table(tmp_path, rows=20)
    table = read_table(path)
    schema = infer_schema(table, {"label": "label", "colour": "category", "shape": "text", "note": "text"})
    assert probe_inputs(table, schema, "label", PreprocessingConfig()) is None


@pytest.mark.parametrize(("redundant", "fusion"), [(False, "film"), (True, "gated")])
def test_init_writes_its_choice_and_why_at_the_top_of_the_config(
    tmp_path: Path, redundant: bool, fusion: str
) -> None:
    path = _xor_table(tmp_path)
    if redundant:
        frame = pd.read_csv(path)
        frame["note"] = "the answer is " + frame["label"]
        frame.to_csv(path, index=False)
    out = tmp_path / "config.yaml"
    result = runner.invoke(
        app, ["init", str(path), "-t", "label", "-c", "shape=text", "-c", "note=text", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    first = out.read_text().splitlines()[0]
    assert first.startswith(f"# polyfuse init chose fusion {fusion}")
    assert ("complementary" in first) != redundant
    config = load_config(out)  # the comment does not get in the way
    assert config.fusion.name == fusion
    assert (config.training.aux_loss_weight == 0.0) != redundant
    assert config.training.epochs == (20 if redundant else 60)
    # an interaction is learned after plateaus of the validation loss, which early stopping mistook for
    # the end; redundant tables keep it
    assert config.training.early_stopping_patience == (5 if redundant else None)
