"""Late fusion: the averaged probabilities, a missing input's vote left out, and robustness curves for the
ensemble (members with fixed answers, so every number is known in advance), plus a real loaded model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import polyfuse
from polyfuse.commands import split_positions
from polyfuse.data.datasets import make_synthetic_table
from polyfuse.data.errors import DataError
from polyfuse.data.preprocess import PreprocessingConfig, Preprocessor
from polyfuse.data.schema import ColumnSchema, Modality, Role, TableSchema
from polyfuse.data.table import Table, read_table
from polyfuse.evaluation.late_fusion import LateFusionEnsemble
from polyfuse.evaluation.robustness import SEVERITIES, robustness_curves, robustness_steps

N_ROWS = 20


class FixedMember:
    """A stand-in for a loaded single-input model: it reads `name` and puts `weight` on a class fixed per
    row (the true label, or the next class when `wrong`), the rest spread evenly, whatever the cells hold."""

    def __init__(self, preprocessor: Preprocessor, name: str, weight: float, wrong: bool) -> None:
        self.preprocessor = preprocessor
        self.model = SimpleNamespace(input_keys=[name])
        self.specs = dict(preprocessor.state.targets)
        self.targets = list(self.specs)
        self.directory = Path(f"{name}-only")
        self.weight, self.wrong = weight, wrong

    def predict_table(self, table: Table) -> pd.DataFrame:
        classes = self.specs["label"].classes
        ids = table.frame["label"].map(classes.index).to_numpy()
        chosen = (ids + 1) % len(classes) if self.wrong else ids
        probs = np.full((len(ids), len(classes)), (1 - self.weight) / (len(classes) - 1))
        probs[np.arange(len(ids)), chosen] = self.weight
        return pd.DataFrame(probs, columns=[f"label_proba_{c}" for c in classes])


@pytest.fixture(scope="module")
def fixed_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Table, LateFusionEnsemble]:
    folder = tmp_path_factory.mktemp("late")
    source = make_synthetic_table(folder, n_rows=N_ROWS, seed=0, missing_rate=0.0)
    table = read_table(pd.read_csv(source)[["image", "audio", "label"]], base_dir=folder)
    schema = TableSchema(
        columns=[
            ColumnSchema(name="image", kind=Modality.IMAGE),
            ColumnSchema(name="audio", kind=Modality.AUDIO),
            ColumnSchema(name="label", kind=Role.LABEL),
        ]
    )
    preprocessor = Preprocessor.fit(table, schema, PreprocessingConfig(), {"label": None})
    # The image member is right and sure; the audio member is wrong and less sure: together, right.
    image = FixedMember(preprocessor, "image", weight=0.8, wrong=False)
    audio = FixedMember(preprocessor, "audio", weight=0.6, wrong=True)
    return table, LateFusionEnsemble([image, audio])  # type: ignore[list-item]


def test_probabilities_are_the_members_mean_and_a_missing_input_drops_its_vote(
    fixed_pair: tuple[Table, LateFusionEnsemble],
) -> None:
    table, ensemble = fixed_pair
    image, audio = (m.predict_table(table).to_numpy() for m in ensemble.members)
    np.testing.assert_allclose(ensemble.predict_proba(table).to_numpy(), (image + audio) / 2, atol=1e-6)

    frame = table.frame.copy()
    frame.loc[0, "image"] = None  # row 0: only the audio member votes
    frame.loc[1, "audio"] = ""  # row 1: only the image member votes
    frame.loc[2, ["image", "audio"]] = [np.nan, None]  # row 2: nobody can read it, so both count
    proba = ensemble.predict_proba(frame, base_dir=table.base_dir).to_numpy()
    np.testing.assert_allclose(proba[0], audio[0], atol=1e-6)
    np.testing.assert_allclose(proba[1], image[1], atol=1e-6)
    np.testing.assert_allclose(proba[2:], (image[2:] + audio[2:]) / 2, atol=1e-6)
    assert ensemble.evaluate(table)["label"]["accuracy"] == 1.0
    unlabelled = table.frame.copy()
    unlabelled.loc[3, "label"] = None
    with pytest.raises(DataError, match="row 3, column 'label': label is missing"):
        ensemble.evaluate(Table(unlabelled, table.base_dir))


def test_robustness_curves_of_the_ensemble(fixed_pair: tuple[Table, LateFusionEnsemble]) -> None:
    table, ensemble = fixed_pair
    ticks: list[int] = []
    curves = robustness_curves(ensemble, table, progress=lambda: ticks.append(1))
    assert len(ticks) == robustness_steps(ensemble) == 1 + (4 + 3) * 10
    assert curves["metric"] == "accuracy" and curves["clean"] == 1.0
    assert set(curves["curves"]) == {"image", "audio"}
    assert set(curves["curves"]["image"]) == {"gaussian_noise", "occlusion", "blur", "removal"}
    assert set(curves["curves"]["audio"]) == {"white_noise", "time_mask", "removal"}
    # Rows without their image keep only the wrong audio vote; rows without audio keep the right image one.
    expected = [1 - round(s * N_ROWS) / N_ROWS for s in SEVERITIES]
    np.testing.assert_allclose(curves["curves"]["image"]["removal"]["values"], expected)
    assert curves["curves"]["image"]["removal"]["auc"] == pytest.approx(np.trapezoid(expected, SEVERITIES))
    assert curves["curves"]["audio"]["removal"]["values"] == [1.0] * 11
    # These members ignore the cells' content, so noise changes nothing.
    assert curves["curves"]["image"]["blur"] == {"values": [1.0] * 11, "auc": 1.0}


def test_members_must_predict_the_same_classes(fixed_pair: tuple[Table, LateFusionEnsemble]) -> None:
    _, ensemble = fixed_pair
    other = FixedMember(ensemble.members[0].preprocessor, "audio", 0.6, False)
    other.specs = {"label": other.specs["label"].model_copy(update={"classes": ["x", "y", "z"]})}
    with pytest.raises(ValueError, match="does not predict target 'label'"):
        LateFusionEnsemble([ensemble.members[0], other])  # type: ignore[list-item]


def test_an_ensemble_of_one_real_model_scores_like_the_model(planted: tuple[Path, Path]) -> None:
    table_path, model_dir = planted
    predictor = polyfuse.load(model_dir)
    table, positions = split_positions(predictor, table_path, "test")
    test = table.subset(positions[:30])
    ensemble = LateFusionEnsemble([predictor, predictor])
    np.testing.assert_allclose(
        ensemble.predict_proba(test).to_numpy(), predictor.predict_proba(test).to_numpy(), atol=1e-6
    )
    ours, theirs = ensemble.evaluate(test)["label"], predictor.evaluate(test)["label"]
    assert ours["accuracy"] == theirs["accuracy"] and ours["confusion_matrix"] == theirs["confusion_matrix"]
