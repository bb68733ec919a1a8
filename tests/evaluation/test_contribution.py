"""Per-input contribution and per-row explanations: golden Shapley numbers, efficiency, planted truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import polyfuse
from polyfuse.data.table import read_table
from polyfuse.evaluation.contribution import _exact_shapley, _sampled_shapley, modality_contribution


def test_exact_shapley_matches_a_hand_computed_game() -> None:
    # Three inputs; v(S) = 0.1·|S∩{0}| + 0.2·|S∩{1}| + 0.3·[0 and 2 both in S] (+0.05 for the empty set).
    subsets = [tuple(bool(b >> k & 1) for k in range(3)) for b in range(8)]
    index = {s: k for k, s in enumerate(subsets)}

    def game(s: tuple[bool, ...]) -> float:
        return 0.05 + 0.1 * s[0] + 0.2 * s[1] + 0.3 * (s[0] and s[2])

    v = torch.tensor([[game(s)] for s in subsets])  # (S, 1)
    phi = _exact_shapley(v, subsets, index, 3)[:, 0]
    # By hand: input 0 gets its 0.1 and half the 0.3 interaction; input 2 the other half; input 1 its 0.2.
    assert phi.tolist() == pytest.approx([0.25, 0.2, 0.15])
    # Estimated over every order of 3 inputs, the sampled estimator is exact too.
    import itertools

    orders = [list(p) for p in itertools.permutations(range(3))]
    assert _sampled_shapley(v, orders, index, 3)[:, 0].tolist() == pytest.approx([0.25, 0.2, 0.15])


def test_explain_columns_and_efficiency(planted: tuple[Path, Path]) -> None:
    table, model_dir = planted
    predictor = polyfuse.load(model_dir)
    rows = pd.read_csv(table).head(12)
    explained = predictor.explain(rows, base_dir=table.parent)
    assert explained.attrs["shapley_method"] == "exact"
    assert list(explained.columns) == [
        "predicted",
        "probability",
        "base",
        "loo_audio",
        "loo_image",
        "shapley_audio",
        "shapley_image",
    ]
    # The predicted class and its probability are those of predict / predict_proba.
    proba = predictor.predict_proba(rows, base_dir=table.parent)
    assert explained["predicted"].tolist() == predictor.predict(rows, base_dir=table.parent)["label"].tolist()
    np.testing.assert_allclose(explained["probability"], proba.max(axis=1), atol=1e-5)
    # Efficiency: the Shapley values share out exactly p(all inputs) − p(no input).
    total = explained["shapley_audio"] + explained["shapley_image"]
    np.testing.assert_allclose(total, explained["probability"] - explained["base"], atol=1e-5)
    # Leave-one-out without the audio is the probability with the image alone, as predict_proba sees it.
    image_only = predictor.predict_proba(rows.drop(columns=["audio"]), base_dir=table.parent).to_numpy()
    chosen = proba.to_numpy().argmax(1)
    expected = explained["probability"] - image_only[np.arange(len(rows)), chosen]
    np.testing.assert_allclose(explained["loo_audio"], expected, atol=1e-5)


def test_contribution_recovers_the_planted_input(planted: tuple[Path, Path]) -> None:
    table_path, model_dir = planted
    predictor = polyfuse.load(model_dir)
    table = read_table(table_path)
    test = table.subset(list(np.flatnonzero(table.frame["split"] == "test")))
    found = modality_contribution(predictor, test)
    image, audio = found["inputs"]["image"], found["inputs"]["audio"]
    assert found["metric"] == "accuracy" and found["full"] > 0.8, found
    # Only the image carries the label: without it accuracy falls towards chance (1/3); without the
    # shuffled audio it holds.
    assert image["drop_removed"] > 0.4 and abs(audio["drop_removed"]) < 0.05, found
    assert image["drop_permuted"] > 0.4 and abs(audio["drop_permuted"]) < 0.05, found
    assert image["shapley_share"] > 0.9, found


def test_explain_estimates_shapley_above_four_inputs(
    synthetic_table: Path, tmp_path: Path, small_config: object
) -> None:
    from polyfuse.training.run import train

    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=1)  # type: ignore[operator]
    model_dir = train(config, tmp_path / "run", show_progress=False, log=lambda *_: None).model_dir
    predictor = polyfuse.load(model_dir)
    rows = pd.read_csv(synthetic_table).head(6)
    explained = predictor.explain(rows, base_dir=synthetic_table.parent)
    assert explained.attrs["shapley_method"] == "sampled (64 input orders)"
    shapley = explained[[c for c in explained.columns if c.startswith("shapley_")]]
    assert shapley.shape[1] == 5
    # Each sampled order shares out p(all) − p(none) exactly, so their mean does too.
    np.testing.assert_allclose(shapley.sum(axis=1), explained["probability"] - explained["base"], atol=1e-5)
    assert not math.isnan(float(shapley.abs().to_numpy().sum()))
