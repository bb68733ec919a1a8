"""Calibration: expected calibration error, reliability diagrams and temperature scaling.

ECE (Guo et al., 2017): the rows' top-class confidences fall into `bins` equal-width bins over [0, 1]
(bin b holds confidences in (b/bins, (b+1)/bins], the first bin also holds 0); ECE is the row-weighted mean
of |accuracy − mean confidence| over the bins. Temperature scaling divides a classification target's logits
by one number T fitted on the validation split (minimum negative log-likelihood); it never changes which
class is predicted. The fitted temperatures live in the model directory's `calibration.json`, which
`load_model` applies to every prediction from then on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

CALIBRATION_FILE = "calibration.json"
DEFAULT_BINS = 15


def reliability_bins(
    probabilities: Tensor, targets: Tensor, bins: int = DEFAULT_BINS
) -> list[dict[str, Any]]:
    """probabilities (N, C), targets (N,) class ids → per bin: lower, upper, count, confidence, accuracy
    (the last two None for an empty bin)."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == targets).double()
    # bin of each row: ceil(conf · bins) − 1, so conf = 1 lands in the last bin and conf = 0 in the first
    which = (torch.ceil(confidence.double() * bins).long() - 1).clamp(0, bins - 1)
    out = []
    for b in range(bins):
        chosen = which == b
        count = int(chosen.sum())
        out.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[chosen].double().mean()) if count else None,
                "accuracy": float(correct[chosen].mean()) if count else None,
            }
        )
    return out


def expected_calibration_error(probabilities: Tensor, targets: Tensor, bins: int = DEFAULT_BINS) -> float:
    """ECE over `bins` equal-width confidence bins (see the module docstring)."""
    n = len(targets)
    if n == 0:
        raise ValueError("ECE needs at least one row")
    return sum(
        float(b["count"]) / n * abs(float(b["accuracy"]) - float(b["confidence"]))
        for b in reliability_bins(probabilities, targets, bins)
        if b["count"]
    )


def fit_temperature(logits: Tensor, targets: Tensor) -> float:
    """The T > 0 minimising the negative log-likelihood of softmax(logits / T) (L-BFGS on log T)."""
    if len(targets) == 0:
        raise ValueError("temperature scaling needs validation rows")
    # The logits and labels come from evaluation under torch.inference_mode(); autograd may not save such
    # tensors for backward, so work on ordinary copies.
    logits = logits.detach().double().clone()
    targets = targets.clone()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp().clamp(0.01, 100.0))


def calibration_summary(logits: Tensor, targets: Tensor, temperature: float, bins: int) -> dict[str, Any]:
    """ECE, NLL and reliability bins before and after dividing the logits by `temperature`."""
    before = torch.softmax(logits.double(), -1)
    after = torch.softmax(logits.double() / temperature, -1)
    return {
        "rows": len(targets),
        "ece_before": expected_calibration_error(before, targets, bins),
        "ece_after": expected_calibration_error(after, targets, bins),
        "nll_before": float(F.cross_entropy(logits.double(), targets)),
        "nll_after": float(F.cross_entropy(logits.double() / temperature, targets)),
        "reliability_before": reliability_bins(before, targets, bins),
        "reliability_after": reliability_bins(after, targets, bins),
    }


def read_temperatures(directory: Path) -> dict[str, float]:
    """target → temperature from a model directory's calibration.json ({} when it has none)."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return {t: float(v["temperature"]) for t, v in saved.get("targets", {}).items()}


def split_logits(predictor: Any, table: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """classification target → (raw logits (N, C), class ids (N,)) of the predictor's model on `table`."""
    from polyfuse.evaluation.evaluate import collect

    model = predictor.model
    objective = model.objective(predictor._require("predict"))
    rows = collect(model, predictor._batches(table, True), objective.eval_rows)
    return {
        t: (rows[f"logits/{t}"], rows[f"target/{t}"])
        for t, spec in predictor.specs.items()
        if spec.task == "classification"
    }


def calibrate_model(
    model_dir: Path,
    table_path: Path,
    *,
    fit_split: str = "val",
    check_split: str | None = "test",
    bins: int = DEFAULT_BINS,
    encoding: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Fit a temperature per classification target on `fit_split` of `table_path` (the training table:
    its validation split is drawn again exactly as training drew it), write MODEL_DIR/calibration.json
    atomically, and return what was written: per target the temperature and ECE / NLL before and after on
    the fitting split and on `check_split` (when the table has one)."""
    from polyfuse.atomic import atomic_write_text
    from polyfuse.commands import split_positions
    from polyfuse.data.errors import DataError, Problem
    from polyfuse.predict import Predictor

    predictor = Predictor(model_dir, show_progress=show_progress)
    if not any(s.task == "classification" for s in predictor.specs.values()):
        raise DataError(
            [
                Problem(
                    "temperature scaling needs a classification target; this model has none",
                    file=str(model_dir),
                )
            ]
        )
    table, positions = split_positions(predictor, table_path, fit_split, encoding=encoding)
    fitted = split_logits(predictor, table.subset(positions))
    checked: dict[str, tuple[Tensor, Tensor]] = {}
    if check_split is not None:
        try:
            table, positions = split_positions(predictor, table_path, check_split, encoding=encoding)
            checked = split_logits(predictor, table.subset(positions))
        except DataError:
            checked = {}  # the table has no such split: report the fitting split only
    targets: dict[str, Any] = {}
    for target, (logits, labels) in fitted.items():
        temperature = fit_temperature(logits, labels)
        targets[target] = {"temperature": temperature, fit_split: _brief(logits, labels, temperature, bins)}
        if target in checked:
            targets[target][check_split] = _brief(*checked[target], temperature, bins)
    saved = {"method": "temperature scaling", "fitted_on": fit_split, "bins": bins, "targets": targets}
    atomic_write_text(Path(model_dir) / CALIBRATION_FILE, json.dumps(saved, indent=2))
    return saved


def _brief(logits: Tensor, labels: Tensor, temperature: float, bins: int) -> dict[str, Any]:
    summary = calibration_summary(logits, labels, temperature, bins)
    return {k: v for k, v in summary.items() if not k.startswith("reliability")}
