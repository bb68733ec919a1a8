"""`polyfuse predict` loads only what predicting needs (issue 14, start-up).

Importing Lightning, transformers, torchmetrics or scipy.signal costs seconds of a predict command's wall
time; a model without Hugging Face encoders or text needs none of them. The check is on what the process
imported, not on a time, so it holds on a loaded machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from polyfuse.config import RunConfig
from polyfuse.data.datasets import make_synthetic_table
from polyfuse.training.run import train

# Modules the predict path must not import for an image + audio + tabular model.
NOT_FOR_PREDICT = ("lightning", "transformers", "torchmetrics", "scipy.signal", "sklearn", "tensorboard")

# The real command line in a fresh interpreter; then the heavy modules it imported, as JSON on stdout.
PREDICT_THEN_LIST_MODULES = """
import json, sys
from polyfuse.cli import main
sys.argv = ["polyfuse", "predict", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    if e.code:
        raise
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_predict_does_not_import_training_or_hugging_face_code(
    tmp_path: Path, small_config: Callable[..., RunConfig]
) -> None:
    table = make_synthetic_table(tmp_path / "data", n_rows=40, seed=3)
    pd.read_csv(table).drop(columns=["text"]).to_csv(table, index=False)
    config = small_config(table, tmp_path / "data" / "config.yaml", epochs=1)
    model_dir = train(config, tmp_path / "run", show_progress=False, log=lambda *_: None).model_dir

    output = tmp_path / "predictions.csv"
    script = PREDICT_THEN_LIST_MODULES.format(heavy=NOT_FOR_PREDICT)
    result = subprocess.run(
        [sys.executable, "-c", script, str(model_dir), str(table), "-o", str(output)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    predictions = pd.read_csv(output)
    assert len(predictions) == 40
    assert set(predictions["label"]) <= {"class_0", "class_1", "class_2"}
