"""A small fixed model on a table where only the image carries the label (the audio is shuffled across
rows), shared by the evaluation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from polyfuse.data.datasets import make_synthetic_table
from polyfuse.training.run import train


def planted_table(folder: Path, carrier: str = "image", shuffled: str = "audio", seed: int = 0) -> Path:
    """The synthetic table reduced to two inputs: `carrier` keeps its link to the label, `shuffled` is
    permuted across rows, so it says nothing about the row's label."""
    source = make_synthetic_table(folder, n_rows=300, seed=seed, missing_rate=0.0)
    frame = pd.read_csv(source)[["id", carrier, shuffled, "label", "split"]]
    frame[shuffled] = frame[shuffled].to_numpy()[np.random.default_rng(seed).permutation(len(frame))]
    path = folder / "planted.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory, small_config: Any) -> tuple[Path, Path]:
    """(table, model directory) of a small gated-fusion model trained on `planted_table`."""
    work = tmp_path_factory.mktemp("planted")
    table = planted_table(work / "data")
    config = small_config(table, work / "config.yaml", epochs=4)
    # No augmentation: the model is small and the test box is shared; the clean signal trains in 4 epochs.
    image = config.data.preprocessing.image
    image = image.model_copy(update={"augment": image.augment.model_copy(update={"enabled": False})})
    audio = config.data.preprocessing.audio
    audio = audio.model_copy(update={"augment": audio.augment.model_copy(update={"enabled": False})})
    preprocessing = config.data.preprocessing.model_copy(update={"image": image, "audio": audio})
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"preprocessing": preprocessing})}
    )
    result = train(config, work / "run", show_progress=False, log=lambda *_: None)
    return table, result.model_dir
