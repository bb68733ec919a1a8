"""`polyfuse report MODEL_DIR TABLE -o report.html`: one self-contained HTML file plus report.json.

The HTML holds its plots as inline SVG and the error rows' media as data URIs: it opens offline in any
browser and loads nothing. report.json holds the same numbers; `modality_contribution` maps each input to
the drop of the target's metric when that input is missing from every row.
"""

from __future__ import annotations

import base64
import csv
import datetime
import json
from html import escape
from pathlib import Path
from typing import Any

import torch

from polyfuse.atomic import atomic_write_text
from polyfuse.data.media import is_missing, read_source_bytes, resolve_media
from polyfuse.data.schema import Modality
from polyfuse.data.table import Table
from polyfuse.evaluation import svg
from polyfuse.evaluation.analysis import confident_errors, per_class_metrics
from polyfuse.evaluation.calibration import (
    DEFAULT_BINS,
    expected_calibration_error,
    read_temperatures,
    reliability_bins,
    split_logits,
)
from polyfuse.evaluation.contribution import contribution_steps, modality_contribution
from polyfuse.evaluation.robustness import robustness_curves, robustness_steps
from polyfuse.evaluation.tables import default_target
from polyfuse.progress import progress_bar

ERROR_ROWS = 8


def build_report(
    model_dir: Path,
    table_path: Path,
    *,
    split: str | None = "test",
    robustness: bool = True,
    encoding: str | None = None,
    show_progress: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Every number of the report, as report.json holds them."""
    from polyfuse.commands import split_positions
    from polyfuse.predict import Predictor

    predictor = Predictor(model_dir)
    whole, positions = split_positions(predictor, table_path, split, encoding=encoding)
    table = whole.subset(positions)
    target = default_target(predictor.specs, None, allow_regression=False)
    spec = predictor.specs[target]
    steps = 3 + contribution_steps(len(predictor.model.input_keys))
    steps += robustness_steps(predictor) if robustness else 0
    with progress_bar("report", total=steps, enabled=show_progress) as advance:
        metrics = predictor.evaluate(table)
        advance(1)
        logits, labels = split_logits(predictor, table)[target]
        temperature = read_temperatures(Path(model_dir)).get(target)
        raw = torch.softmax(logits.double(), -1)
        shown = torch.softmax(logits.double() / temperature, -1) if temperature else raw
        advance(1)
        contribution = modality_contribution(predictor, table, target, seed=seed, progress=lambda: advance(1))
        curves = (
            robustness_curves(predictor, table, target, seed=seed, progress=lambda: advance(1))
            if robustness
            else None
        )
        errors = confident_errors(shown.float(), labels, ERROR_ROWS)
        for error in errors:
            error["table_row"] = positions[error["row"]]
            error["predicted"] = spec.classes[error["predicted"]]
            error["true"] = spec.classes[error["true"]]
        advance(1)
    calibration: dict[str, Any] = {
        "bins": DEFAULT_BINS,
        "temperature": temperature,
        "ece": expected_calibration_error(shown, labels),
        "reliability": reliability_bins(shown, labels),
    }
    if temperature:
        calibration["ece_before_scaling"] = expected_calibration_error(raw, labels)
        calibration["reliability_before_scaling"] = reliability_bins(raw, labels)
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": str(model_dir),
        "table": str(table_path),
        "split": split,
        "rows": len(table),
        "target": target,
        "metrics": metrics,
        "per_class": per_class_metrics(shown.argmax(-1), labels, spec.classes),
        "modality_contribution": {n: v["drop_removed"] for n, v in contribution["inputs"].items()},
        "contribution": contribution,
        "robustness": curves,
        "calibration": calibration,
        "errors": errors,
        "learning_curves": learning_curves(Path(model_dir)),
        "data_summary": data_summary(predictor, table, target),
        "config": predictor.config.to_yaml(),
    }


def learning_curves(model_dir: Path) -> dict[str, list[float | None]]:
    """Per-epoch columns of the training run's CSV log (RUN_DIR/logs/csv/version_*/metrics.csv), merged
    over versions (a resumed run writes a new one): column → value per epoch. {} when the log is gone."""
    logs = sorted((model_dir.resolve().parent / "logs" / "csv").glob("version_*/metrics.csv"))
    by_epoch: dict[int, dict[str, float]] = {}
    for path in logs:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                for key, value in row.items():
                    if (
                        value
                        and key not in ("epoch", "step")
                        and (key.endswith("_epoch") or key.startswith("val_"))
                    ):
                        by_epoch.setdefault(epoch, {})[key.removesuffix("_epoch")] = float(value)
    epochs = sorted(by_epoch)
    keys = sorted({k for values in by_epoch.values() for k in values})
    out: dict[str, list[float | None]] = {"epoch": [float(e + 1) for e in epochs]}
    for key in keys:
        out[key] = [by_epoch[e].get(key) for e in epochs]
    return out if epochs else {}


def data_summary(predictor: Any, table: Table, target: str) -> dict[str, Any]:
    """Rows, each input's modality and missing count, and the class counts of the target."""
    from polyfuse.evaluation.tables import input_columns

    frame = table.frame
    inputs = {}
    for name, modality in predictor.preprocessor.inputs.items():
        columns = [c for c in input_columns(predictor.preprocessor, name) if c in frame.columns]
        missing = sum(all(is_missing(frame.at[i, c]) for c in columns) for i in range(len(frame)))
        inputs[name] = {"modality": modality.value, "columns": columns, "missing": int(missing)}
    classes: dict[str, int] = {}
    if target in frame.columns:
        classes = {str(k): int(v) for k, v in frame[target].astype(str).value_counts().sort_index().items()}
    return {
        "rows": len(frame),
        "inputs": inputs,
        "classes": classes,
    }


# --- HTML -------------------------------------------------------------------------------------------
def _media_uri(cell: Any, table: Table, modality: Modality) -> str | None:
    try:
        source = resolve_media(
            cell, table.base_dir, allow_base64=table.from_python, allow_paths=table.media_paths
        )
        if source is None:
            return None
        data = read_source_bytes(source, 20_000_000)
    except Exception:  # a missing file is shown as such in the report, not a failed report
        return None
    if modality is Modality.AUDIO:
        mime = "audio/wav" if data[:4] == b"RIFF" else "audio/flac" if data[:4] == b"fLaC" else "audio/ogg"
    else:
        mime = (
            "image/png" if data[:4] == b"\x89PNG" else "image/jpeg" if data[:2] == b"\xff\xd8" else "image/*"
        )
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _table_html(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else escape(str(value))


def render_html(
    report: dict[str, Any], table: Table, predictor_inputs: dict[str, Modality]
) -> tuple[str, list[str]]:
    """The HTML page and the names of the plots it holds."""
    plots: list[str] = []
    sections: list[str] = []

    def plot(markup: str, name: str) -> str:
        plots.append(name)
        return markup

    target = report["target"]
    metric_rows = [
        [escape(k), _f(v)] for k, v in report["metrics"].get(target, {}).items() if isinstance(v, float | int)
    ]
    sections.append(f"<h2>Metrics ({escape(target)})</h2>" + _table_html(["metric", "value"], metric_rows))

    curves = report["learning_curves"]
    if curves:
        epochs = [float(e) for e in curves["epoch"] if e is not None]
        losses = {k: v for k, v in curves.items() if k.endswith("loss") and k != "epoch"}
        others = {k: v for k, v in curves.items() if not k.endswith("loss") and k != "epoch"}
        html = "<h2>Learning curves</h2>"
        for name, group in (("learning_loss", losses), ("learning_metrics", others)):
            if group:
                series = {
                    k: (
                        [e for e, x in zip(epochs, v, strict=True) if x is not None],
                        [x for x in v if x is not None],
                    )
                    for k, v in group.items()
                }
                html += plot(svg.line_chart(name, name.replace("_", " "), series, "epoch", ""), name)
        sections.append(html)

    per_class = report["per_class"]
    class_rows = [
        [escape(c), _f(v["precision"]), _f(v["recall"]), _f(v["f1"]), str(v["support"])]
        for c, v in per_class["per_class"].items()
    ]
    sections.append(
        "<h2>Per class</h2>"
        + _table_html(["class", "precision", "recall", "F1", "support"], class_rows)
        + plot(
            svg.heatmap(
                "confusion_matrix", "confusion matrix", per_class["confusion_matrix"], per_class["classes"]
            ),
            "confusion_matrix",
        )
    )

    contribution = report["contribution"]
    rows = [
        [
            escape(n),
            _f(v["removed"]),
            _f(v["drop_removed"]),
            _f(v["permuted"]),
            _f(v["drop_permuted"]),
            _f(v.get("shapley_share", "")),
        ]
        for n, v in contribution["inputs"].items()
    ]
    sections.append(
        f"<h2>Modality contribution</h2><p>{escape(contribution['metric'])} with every input: "
        f"{contribution['full']:.4f}. Removed: the input missing in every row (as the model saw missing "
        "inputs in training); permuted: moved between rows (seeded). Shapley share: each input's share of "
        "the mean |Shapley value| of the predicted class's probability.</p>"
        + _table_html(["input", "removed", "drop", "permuted", "drop", "Shapley share"], rows)
        + plot(
            svg.bar_chart(
                "contribution",
                f"{contribution['metric']} drop without each input",
                report["modality_contribution"],
                "drop",
            ),
            "contribution",
        )
    )

    robustness = report["robustness"]
    if robustness:
        html = (
            "<h2>Robustness</h2><p>The metric over 11 severity levels per input and noise family; AUC is the "
            "area under each curve (trapezoid rule over severity 0–1).</p>"
        )
        auc_rows = []
        for name, families in robustness["curves"].items():
            series = {f: (robustness["severities"], c["values"]) for f, c in families.items()}
            html += plot(
                svg.line_chart(
                    f"robustness_{name}",
                    f"robustness: {name}",
                    series,
                    "severity",
                    robustness["metric"],
                    (0.0, 1.0),
                ),
                f"robustness_{name}",
            )
            auc_rows += [[escape(name), escape(f), _f(c["auc"])] for f, c in families.items()]
        sections.append(html + _table_html(["input", "noise", "AUC"], auc_rows))

    calibration = report["calibration"]
    series = {"perfect": ([0.0, 1.0], [0.0, 1.0])}
    for key, label in (("reliability_before_scaling", "before scaling"), ("reliability", "model")):
        if key in calibration:
            used = [b for b in calibration[key] if b["count"]]
            series[label] = ([b["confidence"] for b in used], [b["accuracy"] for b in used])
    text = f"ECE ({calibration['bins']} bins): {calibration['ece']:.4f}"
    if calibration.get("temperature"):
        text += f" with temperature {calibration['temperature']:.4f}; before scaling {calibration['ece_before_scaling']:.4f}"
    sections.append(
        f"<h2>Calibration</h2><p>{escape(text)}</p>"
        + plot(
            svg.line_chart(
                "reliability", "reliability diagram", series, "confidence", "accuracy", (0.0, 1.0)
            ),
            "reliability",
        )
    )

    error_rows = []
    for error in report["errors"]:
        row = table.frame.iloc[error["row"]]
        shown = []
        for name, modality in predictor_inputs.items():
            cell = row.get(name)
            if modality in (Modality.IMAGE, Modality.AUDIO) and not is_missing(cell):
                uri = _media_uri(cell, table, modality)
                if uri is None:
                    shown.append(f"{escape(name)}: (unreadable)")
                elif modality is Modality.IMAGE:
                    shown.append(f'<img class="error-image" alt="{escape(name)}" src="{uri}">')
                else:
                    shown.append(f'<audio class="error-audio" controls src="{uri}"></audio>')
            elif modality is Modality.TEXT and not is_missing(cell):
                shown.append(escape(str(cell))[:300])
        error_rows.append(
            [
                str(error["table_row"]),
                escape(error["true"]),
                escape(error["predicted"]),
                _f(error["confidence"]),
                "<br>".join(shown),
            ]
        )
    sections.append(
        "<h2>Most confidently wrong rows</h2>"
        + (
            _table_html(["row", "true", "predicted", "confidence", "inputs"], error_rows)
            if error_rows
            else "<p>No wrong rows.</p>"
        )
    )

    summary = report["data_summary"]
    input_rows = [
        [escape(n), escape(v["modality"]), escape(", ".join(v["columns"])), str(v["missing"])]
        for n, v in summary["inputs"].items()
    ]
    class_counts = [[escape(k), str(v)] for k, v in summary["classes"].items()]
    sections.append(
        f"<h2>Data</h2><p>{summary['rows']} rows of {escape(report['table'])} (split: {escape(str(report['split']))}).</p>"
        + _table_html(["input", "modality", "columns", "missing"], input_rows)
        + _table_html(["class", "rows"], class_counts)
    )
    sections.append(f"<h2>Resolved config</h2><pre>{escape(report['config'])}</pre>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>polyfuse report: {escape(report["model"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
svg.plot {{ display: block; margin: 0.5em 0; }}
img.error-image {{ width: 84px; image-rendering: pixelated; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>polyfuse report</h1>
<p>Model {escape(report["model"])}; {report["rows"]} rows; created {escape(report["created"])}.</p>
{"".join(sections)}
</body></html>
"""
    return page, plots


def write_report(
    model_dir: Path,
    table_path: Path,
    output: Path,
    *,
    split: str | None = "test",
    robustness: bool = True,
    encoding: str | None = None,
    show_progress: bool = False,
) -> Path:
    """Write the HTML report at `output` and report.json beside it (atomically); returns the JSON's path."""
    from polyfuse.commands import split_positions
    from polyfuse.predict import Predictor

    report = build_report(
        model_dir,
        table_path,
        split=split,
        robustness=robustness,
        encoding=encoding,
        show_progress=show_progress,
    )
    predictor = Predictor(model_dir)
    whole, positions = split_positions(predictor, table_path, split, encoding=encoding)
    page, plots = render_html(report, whole.subset(positions), dict(predictor.preprocessor.inputs))
    report["plots"] = plots
    json_path = output.with_suffix(".json")
    atomic_write_text(json_path, json.dumps(report, indent=2))
    atomic_write_text(output, page)
    return json_path
