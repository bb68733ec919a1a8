"""Judging a generative model (vae / autoencoder) with classifiers trained separately on real data.

    coherence, cross   generate input b from each row's input a; a judge of b (a polyfuse model trained on
                       real b alone) must recognise the row's label in it (MMVAE, Shi et al. 2019)
    coherence, joint   decode every input from the same prior sample; the judges must agree on one label
    Fréchet distance   between real and generated inputs in a judge's feature space (its pooled encoder
                       output). FID uses Inception-v3 features; no Inception weights exist offline here, so
                       this is the same formula in the judge's space: compare values across models judged by
                       the same judge, never with published FIDs.
    anomaly ROC-AUC    of the anomaly score: normal rows (0) against out-of-distribution rows (1).

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
    root, _ = linalg.sqrtm(cov_r @ cov_f, disp=False)
    root = np.real(root)
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
