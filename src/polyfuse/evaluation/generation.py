"""Judging a generative model (vae / autoencoder) with classifiers trained separately on real data.

    coherence, cross   generate input b from each row's input a; a judge of b (a polyfuse model trained on
                       real b alone) must recognise the row's label in it (MMVAE, Shi et al. 2019)
    coherence, joint   decode every input from the same prior sample; the judges must agree on one label
    Fréchet distance   between real and generated inputs in a judge's feature space (its pooled encoder
                       output). FID uses Inception-v3 features; no Inception weights exist offline here, so
                       this is the same formula in the judge's space: compare values across models judged by
                       the same judge, never with published FIDs.
    anomaly ROC-AUC    of the anomaly score: normal rows (0) against out-of-distribution rows (1); in
                       `polyfuse evaluate --anomaly-label COLUMN`, from a column of the table that marks them.

Generated media are handed to judges as encoded files (PNG / WAV bytes), so they go through the judge's own
preprocessing exactly as a user's files would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from scipy import linalg
from torchmetrics.functional.classification import binary_auroc

from polyfuse.data.schema import Modality
from polyfuse.data.table import Table
from polyfuse.generation import png_bytes, wav_bytes
from polyfuse.predict import Predictor


def as_files(values: list[Any], modality: Modality, sample_rate: int) -> list[bytes]:
    if modality is Modality.IMAGE:
        return [png_bytes(v) for v in values]
    if modality is Modality.AUDIO:
        return [wav_bytes(v, sample_rate) for v in values]
    raise ValueError(f"judges read images and audio, not {modality.value}")


def judged_labels(judge: Predictor, name: str, files: list[bytes]) -> list[str]:
    """The judge's label for each generated file (its first target)."""
    target = judge.targets[0]
    return [str(v) for v in judge.predict([{name: f} for f in files])[target]]


def frechet_distance(real: npt.NDArray[np.floating[Any]], fake: npt.NDArray[np.floating[Any]]) -> float:
    """‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½) between two sets of feature rows (N, D)."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = np.real(linalg.sqrtm(cov_r @ cov_f))
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root))


def cross_coherence(
    model: Predictor,
    rows: pd.DataFrame,
    source: str,
    target: str,
    judge: Predictor,
    labels: Sequence[str],
    base_dir: Path | None,
    temperature: float = 1.0,
) -> tuple[float, list[Any]]:
    """Share of rows whose `target` generated from `source` alone the judge labels as the row's label."""
    generated = model.generate(
        rows[[source]], target, from_inputs=[source], temperature=temperature, base_dir=base_dir
    )
    modality = model.preprocessor.inputs[target]
    files = as_files(generated, modality, model.preprocessor.state.config.audio.sample_rate)
    judged = judged_labels(judge, target, files)
    return float(np.mean([j == str(t) for j, t in zip(judged, labels, strict=True)])), generated


def joint_coherence(
    model: Predictor, judges: dict[str, Predictor], n: int, seed: int = 0, temperature: float = 1.0
) -> tuple[float, dict[str, list[Any]]]:
    """Share of prior samples whose generated inputs every judge gives the same label."""
    generated = {name: model.generate(None, name, n=n, seed=seed, temperature=temperature) for name in judges}
    rate = model.preprocessor.state.config.audio.sample_rate
    judged = {
        name: judged_labels(judge, name, as_files(generated[name], model.preprocessor.inputs[name], rate))
        for name, judge in judges.items()
    }
    agree = [len({judged[name][i] for name in judges}) == 1 for i in range(n)]
    return float(np.mean(agree)), generated


def judge_features(
    judge: Predictor, name: str, files: list[bytes] | list[str], base_dir: Path | None = None
) -> npt.NDArray[np.float32]:
    return judge.embed([{name: f} for f in files], modality=name, base_dir=base_dir)


def anomaly_auc(
    model: Predictor,
    normal: pd.DataFrame,
    odd: pd.DataFrame,
    base_dir: Path | None,
    odd_base: Path | None = None,
) -> float:
    """ROC-AUC of the anomaly score: normal rows against out-of-distribution rows."""
    normal_scores = model.anomaly(normal, base_dir)["anomaly_score"].to_numpy()
    odd_scores = model.anomaly(odd, odd_base or base_dir)["anomaly_score"].to_numpy()
    scores = torch.tensor(np.concatenate([normal_scores, odd_scores]))
    truth = torch.cat([torch.zeros(len(normal_scores)), torch.ones(len(odd_scores))]).long()
    return float(binary_auroc(scores, truth))


OUT_OF_DISTRIBUTION = {"1", "true", "yes", "ood", "anomaly"}
IN_DISTRIBUTION = {"0", "false", "no", "normal"}


def anomaly_labels(table: Table, column: str) -> list[bool | None]:
    """The column's truth per row: True = out of distribution, False = normal, None = blank (left out).
    Values may be 1 / 0, true / false, yes / no (any case)."""
    from polyfuse.data.errors import DataError, Problem

    if column not in table.frame.columns:
        raise DataError(
            f"--anomaly-label: column '{column}' is not in the table (its columns: {list(table.frame.columns)})"
        )
    labels: list[bool | None] = []
    problems = []
    for row, value in enumerate(table.frame[column].tolist()):
        text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
        text = text.strip().lower().removesuffix(".0")
        if text == "":
            labels.append(None)
        elif text in OUT_OF_DISTRIBUTION or text in IN_DISTRIBUTION:
            labels.append(text in OUT_OF_DISTRIBUTION)
        else:
            labels.append(None)
            problems.append(
                Problem(
                    f"{value!r} is not an anomaly label",
                    row=row,
                    column=column,
                    fix="use 1 / true / yes for out-of-distribution rows and 0 / false / no for normal ones",
                )
            )
    if problems:
        raise DataError(problems)
    return labels


def anomaly_report(predictor: Predictor, table: Table, column: str) -> dict[str, Any]:
    """How well the model's anomaly score separates the rows `column` marks out of distribution from the
    normal ones: ROC-AUC of the score, and precision / recall / false-alarm rate of the flag at the
    threshold calibrated on the validation split. Rows with a blank label or no scorable input are left out
    (and counted)."""
    from polyfuse.data.errors import DataError

    labels = anomaly_labels(table, column)
    found = predictor.anomaly(table)
    scores = found["anomaly_score"].to_numpy()
    kept = [i for i, label in enumerate(labels) if label is not None and not np.isnan(scores[i])]
    truth = np.array([bool(labels[i]) for i in kept])
    if truth.all() or not truth.any():
        raise DataError(
            f"--anomaly-label: column '{column}' needs both normal (0) and out-of-distribution (1) rows with "
            f"a score; it has {int(truth.sum())} out-of-distribution and {int((~truth).sum())} normal"
        )
    flags = found["anomaly"].to_numpy()[kept]
    auc = binary_auroc(torch.tensor(scores[kept]), torch.tensor(truth).long())
    flagged_ood = int((flags & truth).sum())
    return {
        "rows": len(kept),
        "left_out": len(labels) - len(kept),
        "out_of_distribution": int(truth.sum()),
        "roc_auc": float(auc),
        "flag_precision": flagged_ood / max(int(flags.sum()), 1),
        "flag_recall": flagged_ood / int(truth.sum()),
        "flag_false_alarm_rate": float((flags & ~truth).sum() / (~truth).sum()),
    }
