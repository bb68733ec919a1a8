"""Golden numbers for the report's metrics: ECE by hand and against torchmetrics, temperature recovery,
per-class metrics against scikit-learn, confident errors, robustness noise, fold assignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torchmetrics.functional.classification import multiclass_calibration_error

from polyfuse.evaluation.analysis import confident_errors, per_class_metrics
from polyfuse.evaluation.calibration import expected_calibration_error, fit_temperature, reliability_bins
from polyfuse.evaluation.cv import assign_folds
from polyfuse.evaluation.robustness import area_under_curve, noisy_image, noisy_text, noisy_wave


def test_ece_matches_a_hand_computation() -> None:
    # 5 bins of width 0.2. Confidences 0.9 ✓, 0.95 ✓ (bin 5: acc 1, conf 0.925), 0.7 ✗ (bin 4: acc 0,
    # conf 0.7), 0.5 ✓, 0.55 ✗ (bin 3: acc 0.5, conf 0.525): 0.4·0.075 + 0.2·0.7 + 0.4·0.025 = 0.18.
    confidence = torch.tensor([0.9, 0.95, 0.7, 0.5, 0.55], dtype=torch.float64)
    probabilities = torch.stack([confidence, 1 - confidence], dim=1)
    targets = torch.tensor([0, 0, 1, 0, 1])
    assert expected_calibration_error(probabilities, targets, bins=5) == pytest.approx(0.18)
    bins = reliability_bins(probabilities, targets, bins=5)
    assert [b["count"] for b in bins] == [0, 0, 2, 1, 2]
    assert bins[4]["confidence"] == pytest.approx(0.925) and bins[4]["accuracy"] == 1.0


def test_ece_matches_torchmetrics_on_random_predictions() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(500, 4, generator=generator) * 2, -1)
    targets = torch.randint(0, 4, (500,), generator=generator)
    expected = float(
        multiclass_calibration_error(probabilities, targets, num_classes=4, n_bins=15, norm="l1")
    )
    assert expected_calibration_error(probabilities, targets, bins=15) == pytest.approx(expected, abs=1e-6)


def test_temperature_scaling_recovers_the_temperature_labels_were_drawn_at() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(20000, 5, generator=generator) * 3
    labels = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    # Evaluation hands over logits and labels made under inference mode; the fit must accept them.
    with torch.inference_mode():
        frozen_logits, frozen_labels = logits.clone(), labels.clone()
    assert fit_temperature(frozen_logits, frozen_labels) == pytest.approx(2.0, rel=0.05)


def test_per_class_metrics_match_scikit_learn() -> None:
    targets = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2, 2, 1, 2, 2])
    found = per_class_metrics(predicted, targets, ["a", "b", "c"])
    precision, recall, f1, support = precision_recall_fscore_support(
        targets.numpy(), predicted.numpy(), labels=[0, 1, 2], zero_division=0
    )
    for i, name in enumerate("abc"):
        row = found["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
    assert found["confusion_matrix"] == confusion_matrix(targets.numpy(), predicted.numpy()).tolist()


def test_confident_errors_are_the_surest_wrong_rows_first() -> None:
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    targets = torch.tensor([1, 1, 1, 0, 0])  # wrong: row 0 (0.9), row 2 (0.6), row 3 (0.7)
    errors = confident_errors(probabilities, targets, k=2)
    assert [e["row"] for e in errors] == [0, 3]
    assert errors[0] == {
        "row": 0,
        "predicted": 0,
        "true": 1,
        "confidence": pytest.approx(0.9),
        "true_probability": pytest.approx(0.1),
    }


def test_area_under_curve_is_the_trapezoid_rule() -> None:
    values = [1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    # 0.1 · (sum of values − (first + last) / 2)
    assert area_under_curve(values) == pytest.approx(0.1 * (sum(values) - 0.55))


def test_noise_families_at_their_ends() -> None:
    rng = np.random.default_rng(0)
    pixels = np.full((28, 28, 1), 200, dtype=np.uint8)
    assert (noisy_image(pixels, "gaussian_noise", 0.0, rng) == pixels).all()
    occluded = noisy_image(pixels, "occlusion", 0.25, rng)
    assert int((occluded == 0).sum()) == 14 * 14  # a quarter of the area, as a 14×14 square
    assert (noisy_image(pixels, "occlusion", 1.0, rng) == 0).all()
    wave = np.sin(np.linspace(0, 200, 8000))
    noisy = noisy_wave(wave, "white_noise", 0.2, rng)  # SNR 30 dB
    snr = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
    assert snr == pytest.approx(30.0, abs=0.3)
    masked = noisy_wave(wave, "time_mask", 0.5, rng)
    assert int((masked == 0).sum()) >= 4000
    assert noisy_text("a b c d", "token_dropout", 1.0, rng) == ""
    assert noisy_text("a b c d", "typos", 0.0, rng) == "a b c d"
    assert noisy_text("hello world", "typos", 1.0, rng) != "hello world"


def test_stratified_folds_share_classes_and_grouped_folds_keep_groups_whole() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    folds = assign_folds(labels, None, 5, seed=0, n_rows=100)
    for k in range(5):
        chosen = [labels[i] for i in np.flatnonzero(folds == k)]
        assert (chosen.count("a"), chosen.count("b"), chosen.count("c")) == (10, 6, 4)
    assert (assign_folds(labels, None, 5, seed=0, n_rows=100) == folds).all()  # seeded
    groups = [f"speaker{i % 7}" for i in range(100)]
    grouped = assign_folds(labels, groups, 3, seed=0, n_rows=100)
    for g in set(groups):
        assert len({int(grouped[i]) for i in range(100) if groups[i] == g}) == 1
    assert set(grouped.tolist()) == {0, 1, 2}
