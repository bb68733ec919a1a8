"""The generation metrics that need no trained model: the Fréchet distance on fixed feature rows (golden
number worked out by hand) and the reading of an anomaly label column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polyfuse.data.errors import DataError
from polyfuse.data.table import Table
from polyfuse.evaluation.generation import anomaly_labels, frechet_distance


def test_frechet_distance_matches_the_closed_form() -> None:
    # four points: mean 0, covariance diag(2/3, 2/3) (N − 1 in the denominator)
    real = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    fake = 2 * real + np.array([3.0, 0.0])  # mean (3, 0), covariance diag(8/3, 8/3)
    # ‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½) = 9 + 2 · (2/3 + 8/3 − 2 · 4/3) = 9 + 4/3
    assert frechet_distance(real, fake) == pytest.approx(9 + 4 / 3)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)


def test_anomaly_labels_read_common_spellings_and_name_bad_rows() -> None:
    table = Table(pd.DataFrame({"ood": [1, 0, "yes", "No", None, "TRUE", 1.0, "false"]}))
    assert anomaly_labels(table, "ood") == [True, False, True, False, None, True, True, False]
    with pytest.raises(DataError, match=r"row 1, column 'ood': 'maybe' is not an anomaly label"):
        anomaly_labels(Table(pd.DataFrame({"ood": ["yes", "maybe"]})), "ood")
    with pytest.raises(DataError, match="'flag' is not in the table"):
        anomaly_labels(table, "flag")
