"""The `polyfuse` command line. Each command parses its options and calls one library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table as RichTable
from typer.core import TyperCommand, TyperGroup

from polyfuse.data.errors import DataError
from polyfuse.gc_freeze import no_collections_at_exit

app = typer.Typer(
    help="polyfuse: multimodal models from a table.\n\nExit status: 0 on success; 2 for a mistake in the "
    "data, the config or the command line (the message names the row, column, file or field); "
    "`data inspect` exits 1 when it lists problems in the table.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Look at a table before training on it.", no_args_is_help=True)
datasets_app = typer.Typer(help="Build ready-made benchmark tables.", no_args_is_help=True)
build_app = typer.Typer(help="Build a dataset table from its sources.", no_args_is_help=True)
index_app = typer.Typer(help="Embed a table into a searchable index.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(datasets_app, name="datasets")
datasets_app.add_typer(build_app, name="build")


def _print_version(value: bool) -> None:
    if value:
        from polyfuse import __version__

        typer.echo(f"polyfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """Options of `polyfuse` itself."""


console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


# Options several commands share.
TableArg = Annotated[Path, typer.Argument(metavar="TABLE", help="CSV, TSV, JSONL or Parquet table")]
EncodingOption = Annotated[
    str | None,
    typer.Option(
        help="the table's text encoding, e.g. cp1252 (default: UTF-8; a byte-order mark is honoured)"
    ),
]
# The fusion registry's names (tests check this against polyfuse.models.fusion.list_fusions()); spelled
# out here so `--help` does not import torch.
FUSION_NAMES = "concat, cross_attention, film, gated, lowrank, tensor, transformer"
ColumnOption = Annotated[
    list[str] | None,
    typer.Option("--column", "-c", help="override a column's kind: COLUMN=KIND (repeatable)"),
]
TargetOption = Annotated[list[str] | None, typer.Option("--target", "-t", help="target column (repeatable)")]


def _parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"'{item}' should look like COLUMN=KIND, e.g. photo=image")
        column, kind = item.split("=", 1)
        overrides[column.strip()] = kind.strip()
    return overrides


@data_app.command("inspect")
def data_inspect(
    table: TableArg,
    column: ColumnOption = None,
    target: TargetOption = None,
    cache_dir: Annotated[Path | None, typer.Option(help="feature cache folder")] = None,
    max_problems: Annotated[int, typer.Option(help="problems to list")] = 50,
    encoding: EncodingOption = None,
) -> None:
    """Print the inferred schema, counts, missing rates, class balance and every problem found.

    Exit status: 0 when the table is ready to train on, 1 when problems were found (listed), 2 when the
    table cannot be read at all."""
    from polyfuse.data.inspect import inspect_table
    from polyfuse.data.prepare import DataConfig

    config = DataConfig(
        table=table,
        columns=_parse_overrides(column or []),
        targets={t: None for t in target or []},
        cache_dir=cache_dir,
        encoding=encoding,
    )
    report = inspect_table(config, show_progress=sys.stderr.isatty())
    console.print(f"[bold]{report.table}[/bold]: {report.rows} rows, {len(report.columns)} columns")
    columns = RichTable("column", "kind", "missing", "distinct", "why")
    for c in report.columns:
        share = f"{c.missing} ({c.missing / max(report.rows, 1):.0%})"
        columns.add_row(c.name, c.kind, share, str(c.distinct), c.reason)
    console.print(columns)
    if report.split_counts:
        console.print("splits: " + ", ".join(f"{k} {v}" for k, v in report.split_counts.items()))
    for target_name, counts in report.class_balance.items():
        shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:30])
        console.print(f"class balance of '{target_name}' ({len(counts)} classes): {shown}")
    for target_name, summary in report.numeric_targets.items():
        shown = ", ".join(f"{k} {v:g}" for k, v in summary.items())
        console.print(f"'{target_name}' is numeric (regression): {shown}")
    if not report.problems:
        console.print("[green]no problems found[/green]")
        return
    bad_rows = {p.row for p in report.problems if p.row is not None}
    console.print(
        f"[bold red]{len(report.problems)} problem(s)[/bold red]"
        + (f" in {len(bad_rows)} row(s)" if bad_rows else "")
        + ":"
    )
    for p in report.problems[:max_problems]:
        console.print(f"  - {p}", markup=False)
    if len(report.problems) > max_problems:
        console.print(f"  ... and {len(report.problems) - max_problems} more (--max-problems)")
    if len(bad_rows) == len(report.problems) and len(bad_rows) < report.rows:
        console.print(
            f"Fix them, or train with --drop-invalid to drop those {len(bad_rows)} row(s) "
            f"({report.rows - len(bad_rows)} remain)."
        )
    else:
        console.print("Fix them before training.")
    raise typer.Exit(1)


@data_app.command("preview")
def data_preview(
    table: TableArg,
    column: ColumnOption = None,
    target: TargetOption = None,
    preset: Annotated[str | None, typer.Option(help="preprocessing preset, e.g. av-digits")] = None,
    batch_size: Annotated[int, typer.Option(help="rows in the batch")] = 8,
    split: Annotated[str, typer.Option(help="split to draw the batch from")] = "train",
    augment: Annotated[bool, typer.Option(help="apply train-time augmentation")] = False,
    encoding: EncodingOption = None,
) -> None:
    """Validate the table, then print one collated batch: tensor shapes, dtypes and presence masks."""
    from polyfuse.data.preview import preview_batch

    lines = preview_batch(
        table,
        overrides=_parse_overrides(column or []),
        targets=target or [],
        preset=preset,
        batch_size=batch_size,
        split=split,
        augment=augment,
        show_progress=sys.stderr.isatty(),
        encoding=encoding,
    )
    for line in lines:
        console.print(line, markup=False, highlight=False)


@build_app.command("av-digits")
def build_av_digits_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write the table and media into")],
    source: Annotated[
        Path | None,
        typer.Option(help="folder with mnist/ and fsdd/ (default: $POLYFUSE_DATA or ../shared/data)"),
    ] = None,
    mnist: Annotated[
        Path | None, typer.Option(help="folder with the MNIST t10k IDX files, as downloaded")
    ] = None,
    fsdd: Annotated[
        Path | None, typer.Option(help="free-spoken-digit-dataset clone or its recordings/")
    ] = None,
    variant: Annotated[Literal["clean", "noisy"], typer.Option(help="'noisy' builds AV-Digits-N")] = "clean",
    holdout_speaker: Annotated[str | None, typer.Option(help="test = this speaker's recordings")] = None,
) -> None:
    """Build the AV-Digits table (MNIST digits paired with spoken digits) by the protocol in shared/data."""
    from polyfuse.data.datasets import build_av_digits, default_data_dir
    from polyfuse.progress import progress_bar

    if source is None and mnist is None and fsdd is None:
        source = default_data_dir()
    with progress_bar("building AV-Digits", total=3000, enabled=sys.stderr.isatty()) as advance:
        path = build_av_digits(
            out,
            source,
            mnist=mnist,
            fsdd=fsdd,
            variant=variant,
            holdout_speaker=holdout_speaker,
            progress=lambda done, total: advance(1),
        )
    console.print(f"wrote {path}")


@build_app.command("synthetic")
def build_synthetic_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write the table and media into")],
    rows: Annotated[int, typer.Option(help="number of rows")] = 300,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Build a small synthetic text + image + audio + tabular table with a known label rule."""
    from polyfuse.data.datasets import make_synthetic_table

    console.print(f"wrote {make_synthetic_table(out, n_rows=rows, seed=seed)}")


@app.command("init")
def init_command(
    table: TableArg,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="target column (repeatable); a supervised head predicts it"),
    ] = None,
    objective: Annotated[
        list[str] | None,
        typer.Option(
            "--objective",
            help="supervised (default), contrastive (a shared embedding space: search, zero-shot), matching "
            "(a consistency score); repeatable",
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="config file to write")] = Path(
        "config.yaml"
    ),
    column: ColumnOption = None,
    fusion: Annotated[
        str | None,
        typer.Option(
            help=f"fusion: {FUSION_NAMES}; default: chosen from a quick probe of each input alone (gated "
            "for redundant inputs, film for complementary ones; the config's first lines say why). Given, it "
            "replaces only the fusion: dropout, per-input heads and epochs still follow the probe"
        ),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="preprocessing preset, e.g. av-digits")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing config file")] = False,
    encoding: EncodingOption = None,
) -> None:
    """Write a complete config for TABLE, with defaults chosen from its inferred schema.

    The config is written only when it passes every check `polyfuse validate` runs."""
    from polyfuse.atomic import atomic_write_text
    from polyfuse.init_config import check_config, init_config, relative_to_config

    if output.exists() and not force:
        raise DataError(f"{output} exists; pass --force to overwrite it")
    notes: list[str] = []
    config = init_config(
        table,
        target or [],
        output,
        overrides=_parse_overrides(column or []),
        fusion=fusion,
        preset=preset,
        objectives=objective,
        encoding=encoding,
        notes=notes,
    )
    problems = check_config(config)
    if problems:
        raise DataError(problems)
    header = "".join(f"# polyfuse init chose {note}\n" for note in notes)
    atomic_write_text(output, header + relative_to_config(config, output).to_yaml())
    for note in notes:
        console.print(f"chose {note}")
    inputs = ", ".join(f"{n} ({e.name})" for n, e in config.encoders.items())
    objectives = ", ".join(o.name for o in config.objectives)
    console.print(
        f"wrote {output}: inputs {inputs}; targets {', '.join(config.data.targets) or 'none'}; "
        f"objectives {objectives}; fusion {config.fusion.name}"
    )


@app.command("validate")
def validate_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="config YAML")],
) -> None:
    """Check CONFIG without training: every error (field, registry name, option value, column, split) that
    `polyfuse train` would stop on is reported at once. Exit status 0 when valid, 2 when not."""
    from polyfuse.config import read_config
    from polyfuse.init_config import check_config

    config, problems = read_config(config_path)
    if config is not None:
        problems += check_config(config)
    if problems:
        raise DataError(problems)
    console.print(
        f"[green]{config_path} is valid[/green]: every check `polyfuse train` runs before training passed. "
        "Rows and media files are checked as training starts (or now: polyfuse data inspect)."
    )


@app.command("train")
def train_command(
    config_path: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="config YAML (polyfuse init writes one)")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="RUN_DIR", help="run folder: checkpoints, logs, model/")
    ],
    resume: Annotated[bool, typer.Option(help="continue from RUN_DIR/checkpoints/last.ckpt")] = False,
    epochs: Annotated[int | None, typer.Option(help="override training.epochs")] = None,
    seed: Annotated[int | None, typer.Option(help="override training.seed")] = None,
    fusion: Annotated[str | None, typer.Option(help=f"override fusion.name: {FUSION_NAMES}")] = None,
    drop_invalid: Annotated[bool, typer.Option(help="drop rows with problems instead of failing")] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="start from another model's encoders (matched by input name): its model directory or run "
            "folder; override training.init_from"
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="also print the whole resolved config")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only errors and the results")] = False,
    devices: Annotated[
        str | None, typer.Option(help="override training.devices: processes (CPU) or GPUs per node, or auto")
    ] = None,
    num_nodes: Annotated[int | None, typer.Option(help="override training.num_nodes")] = None,
    strategy: Annotated[str | None, typer.Option(help="override training.strategy: auto, ddp, fsdp")] = None,
    accelerator: Annotated[
        str | None, typer.Option(help="override training.accelerator: auto, cpu, gpu")
    ] = None,
) -> None:
    """Train a model from CONFIG; writes RUN_DIR/model (and checkpoints, logs, metrics.json).

    Prints a short summary of the run, then progress: a bar on a terminal, one line per epoch otherwise
    (a log file, CI). Exit status 0 on success, 2 on a mistake in the config or the data."""
    from polyfuse.config import read_config
    from polyfuse.init_config import check_config
    from polyfuse.training.run import train

    config, problems = read_config(config_path)
    if config is not None:
        training = config.training.model_copy(
            update={
                k: v
                for k, v in {
                    "epochs": epochs,
                    "seed": seed,
                    "init_from": init_from,
                    "devices": int(devices) if devices is not None and devices.isdigit() else devices,
                    "num_nodes": num_nodes,
                    "strategy": strategy,
                    "accelerator": accelerator,
                }.items()
                if v is not None
            }
        )
        updates: dict[str, object] = {"training": training}
        if fusion is not None:
            updates["fusion"] = config.fusion.model_copy(update={"name": fusion})
        if drop_invalid:
            updates["data"] = config.data.model_copy(update={"drop_invalid": True})
        config = config.model_copy(update=updates)
    if problems or config is None:
        # The same one-pass report as `polyfuse validate`; train() runs check_config itself otherwise.
        raise DataError(problems + (check_config(config) if config is not None else []))
    if verbose:
        console.rule("resolved config")
        console.print(config.to_yaml(), markup=False, highlight=False)
    log = (lambda *args, **kwargs: None) if quiet else _plain_print
    result = train(config, output, resume=resume, show_progress=sys.stdout.isatty() and not quiet, log=log)
    if not result.main_process:
        return  # the other ranks of a multi-process run: rank 0 reports
    if not quiet:
        console.print(f"resolved config saved to {output / 'config.yaml'}; logs in {output / 'logs'}")
    for split in ("val", "test"):
        for target, values in result.metrics.get(split, {}).items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
            console.print(f"{split} {target}: {shown}")
    console.print(f"model written to {result.model_dir} ({result.epochs} epochs, {result.seconds:.0f} s)")


@app.command("evaluate")
def evaluate_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="model directory (RUN_DIR/model)")],
    table: Annotated[Path, typer.Argument(metavar="TABLE", help="table with the target columns")],
    split: Annotated[
        str | None,
        typer.Option(
            help="score one split: test, val or train (from the split column, or drawn again as training "
            "drew it); 'all' scores every row"
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write metrics as JSON here")] = None,
    encoding: EncodingOption = None,
    anomaly_label: Annotated[
        str | None,
        typer.Option(
            help="column marking out-of-distribution rows (1/true/yes; 0/false/no normal): adds the anomaly "
            "score's ROC-AUC and the flag's precision/recall (autoencoder, vae models)"
        ),
    ] = None,
) -> None:
    """Accuracy, macro precision/recall/F1 and the confusion matrix (or MAE/RMSE/R²) of MODEL_DIR on TABLE;
    reconstruction errors (and, with --anomaly-label, anomaly ROC-AUC) for autoencoder / vae models.

    On the table the model was trained on, name a split (--split test): scoring every row would score
    the training rows too."""
    import json

    from polyfuse.commands import evaluate_table

    metrics = evaluate_table(
        model_dir,
        table,
        split=split,
        show_progress=sys.stderr.isatty(),
        encoding=encoding,
        anomaly_label=anomaly_label,
    )
    for target, values in metrics.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
        console.print(f"{target} ({values.get('rows', 0)} rows): {shown}")
        if "confusion_matrix" in values:
            matrix = RichTable("true \\ predicted", *map(str, values["classes"]))
            for name, row in zip(values["classes"], values["confusion_matrix"], strict=True):
                matrix.add_row(str(name), *map(str, row))
            console.print(matrix)
    if output is not None:
        from polyfuse.atomic import atomic_write_text

        atomic_write_text(output, json.dumps(metrics, indent=2))
        console.print(f"wrote {output}")


@app.command("predict")
def predict_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="model directory (RUN_DIR/model)")],
    table: Annotated[
        Path, typer.Argument(metavar="TABLE", help="table with the input columns (targets not needed)")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV of predictions")] = Path(
        "predictions.csv"
    ),
    split: Annotated[
        str | None, typer.Option(help="only the rows of one split (test, val, train), as for evaluate")
    ] = None,
    encoding: EncodingOption = None,
) -> None:
    """Predict labels (and class probabilities) with MODEL_DIR for every row of TABLE."""
    from polyfuse.commands import predict_table

    frame = predict_table(
        model_dir, table, output, split=split, show_progress=sys.stderr.isatty(), encoding=encoding
    )
    console.print(f"wrote {len(frame)} predictions to {output}")


@app.command("calibrate")
def calibrate_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="model directory (RUN_DIR/model)")],
    table: Annotated[Path, typer.Argument(metavar="TABLE", help="the table the model was trained on")],
    split: Annotated[str, typer.Option(help="split to fit the temperature on")] = "val",
    bins: Annotated[int, typer.Option(min=2, help="confidence bins of the expected calibration error")] = 15,
    encoding: EncodingOption = None,
) -> None:
    """Fit temperature scaling on the validation split and save it with the model (calibration.json).

    From then on predict, predict_proba and serve divide the logits by the fitted temperature (the
    predicted classes never change). Prints ECE and NLL before and after, on the fitting split and on the
    test split."""
    from polyfuse.evaluation.calibration import calibrate_model

    saved = calibrate_model(
        model_dir, table, fit_split=split, bins=bins, encoding=encoding, show_progress=sys.stderr.isatty()
    )
    for target, found in saved["targets"].items():
        console.print(f"{target}: temperature {found['temperature']:.4f}")
        for name, values in found.items():
            if isinstance(values, dict):
                console.print(
                    f"  {name} ({values['rows']} rows): ECE ({bins} bins) {values['ece_before']:.4f} → "
                    f"{values['ece_after']:.4f}, NLL {values['nll_before']:.4f} → {values['nll_after']:.4f}"
                )
    console.print(f"wrote {model_dir / 'calibration.json'}")


@app.command("cv")
def cv_command(
    config_path: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="config YAML (polyfuse init writes one)")
    ],
    folds: Annotated[int, typer.Option(min=2, help="number of folds")] = 5,
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="CV_DIR", help="folder for the folds' runs and cv.json")
    ] = Path("cv"),
    group_by: Annotated[
        str | None, typer.Option(help="column whose groups stay in one fold (e.g. speaker)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="seed of the fold assignment (default training.seed)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only errors and the results")] = False,
) -> None:
    """Cross-validate CONFIG: one model per fold (stratified by the first target, or grouped), each
    metric's mean ± std and per-fold values in CV_DIR/cv.json. Rerun the same command to resume: finished
    folds are skipped and an interrupted one continues from its last checkpoint."""
    from polyfuse.config import read_config
    from polyfuse.evaluation.cv import cross_validate

    config, problems = read_config(config_path)
    if problems or config is None:
        raise DataError(problems)
    log = (lambda *args, **kwargs: None) if quiet else _plain_print
    summary = cross_validate(
        config,
        output,
        folds,
        group_by=group_by,
        seed=seed,
        show_progress=sys.stdout.isatty() and not quiet,
        log=log,
    )
    for section, metrics in summary["metrics"].items():
        shown = ", ".join(f"{m} {v['mean']:.4f} ± {v['std']:.4f}" for m, v in metrics.items())
        console.print(f"{section} ({folds} folds): {shown}")
    console.print(f"wrote {output / 'cv.json'}")


@app.command("report")
def report_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="model directory (RUN_DIR/model)")],
    table: Annotated[Path, typer.Argument(metavar="TABLE", help="table with the target columns")],
    split: Annotated[str | None, typer.Option(help="the split to report on (as for evaluate)")] = "test",
    output: Annotated[Path, typer.Option("--output", "-o", help="the HTML file")] = Path("report.html"),
    robustness: Annotated[bool, typer.Option(help="compute robustness curves (the slowest part)")] = True,
    encoding: EncodingOption = None,
) -> None:
    """One self-contained HTML report (and report.json beside it): learning curves, per-class metrics,
    confusion matrix, modality contributions, robustness curves, calibration, the most confidently wrong
    rows with their media, the resolved config and a data summary."""
    from polyfuse.evaluation.report import write_report

    json_path = write_report(
        model_dir,
        table,
        output,
        split=split,
        robustness=robustness,
        encoding=encoding,
        show_progress=sys.stderr.isatty(),
    )
    console.print(f"wrote {output} and {json_path}")


@app.command("generate")
def generate_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="model directory (RUN_DIR/model)")],
    to: Annotated[str, typer.Option("--to", help="the input to generate, e.g. image or audio")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="file to write: .png / .jpg (image), .wav (audio), .csv")
    ],
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--from",
            help="INPUT=VALUE to generate from, e.g. audio=clip.wav (repeatable); none: unconditional samples",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="samples: a grid of n images, or n WAV files")] = 1,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="latent noise scale; 0 gives the most typical sample")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="random seed of the samples")] = 0,
) -> None:
    """Generate one input of a vae / autoencoder model from others, or unconditionally.

    polyfuse generate MODEL_DIR --from audio=clip.wav --to image -o out.png
    polyfuse generate MODEL_DIR --to image --n 16 -o grid.png"""
    from polyfuse.generation import write_generated
    from polyfuse.predict import Predictor

    row = {}
    for item in source or []:
        if "=" not in item:
            raise typer.BadParameter(
                f"'{item}' should look like INPUT=VALUE, e.g. audio=clip.wav", param_hint="--from"
            )
        name, value = item.split("=", 1)
        row[name.strip()] = value.strip()
    predictor = Predictor(model_dir)
    if to not in predictor.preprocessor.inputs:
        raise DataError(
            f"--to {to}: not an input of the model; inputs: {sorted(predictor.preprocessor.inputs)}"
        )
    unknown = [k for k in row if k not in predictor.preprocessor.inputs]
    if unknown:
        raise DataError(
            f"--from {unknown[0]}: not an input of the model; inputs: {sorted(predictor.preprocessor.inputs)}"
        )
    try:
        if row:
            values = predictor.generate(
                [row] * n, to, from_inputs=list(row), temperature=temperature, seed=seed, base_dir=Path.cwd()
            )
        else:
            values = predictor.generate(None, to, n=n, temperature=temperature, seed=seed)
        written = write_generated(
            output,
            values,
            predictor.preprocessor.inputs[to],
            predictor.preprocessor.state.config.audio.sample_rate,
        )
    except ValueError as e:
        raise DataError(str(e)) from None
    console.print(f"wrote {', '.join(map(str, written))}")


@index_app.command("build")
def index_build_command(
    model_dir: Annotated[Path, typer.Argument(help="model directory of a contrastive model")],
    table: TableArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="index folder to write")],
    input_name: Annotated[
        list[str] | None,
        typer.Option("--input", help="input column to index (repeatable; default: all aligned)"),
    ] = None,
    split: Annotated[str | None, typer.Option(help="only rows of this split")] = None,
    chunk_rows: Annotated[int, typer.Option(help="rows embedded per resumable chunk")] = 2048,
    faiss: Annotated[
        str, typer.Option(help="auto (FAISS IVF for large collections when installed), ivf, hnsw, off")
    ] = "auto",
    faiss_min_rows: Annotated[int, typer.Option(help="'auto' builds FAISS from this many vectors")] = 50_000,
) -> None:
    """Embed TABLE with the model into an index (resumable: rerun the same command after an interruption)."""
    from polyfuse.predict import Predictor
    from polyfuse.progress import progress_bar
    from polyfuse.retrieval import index_model

    if faiss not in ("auto", "ivf", "hnsw", "off"):
        raise DataError(f"--faiss must be auto, ivf, hnsw or off, got {faiss!r}")
    predictor = Predictor(model_dir)
    from polyfuse.data.table import read_table

    total = len(read_table(table))
    with progress_bar("embedding", total=total, enabled=sys.stderr.isatty()) as advance:
        info = index_model(
            predictor,
            table,
            output,
            inputs=input_name,
            split=split,
            chunk_rows=chunk_rows,
            faiss=faiss,  # type: ignore[arg-type]
            faiss_min_rows=faiss_min_rows,
            progress=advance,
            log=console.print,
        )
    for name, meta in info["inputs"].items():
        console.print(f"{name}: {meta['rows']:,} vectors of {meta['dim']} ({meta['kind']})")
    console.print(f"wrote {output} ({info['embed_rows_per_second']:,} rows/s embedded)")


@app.command("search")
def search_command(
    index_dir: Annotated[Path, typer.Argument(help="index folder (polyfuse index build)")],
    text: Annotated[str | None, typer.Option(help="query text")] = None,
    image: Annotated[Path | None, typer.Option(help="query image file")] = None,
    audio: Annotated[Path | None, typer.Option(help="query audio file")] = None,
    k: Annotated[int, typer.Option(help="hits to show")] = 10,
    modality: Annotated[
        str | None, typer.Option(help="indexed input to search (default: the one that is not the query's)")
    ] = None,
) -> None:
    """Find the rows nearest to a text, an image or a sound, across modalities."""
    from polyfuse.predict import Predictor
    from polyfuse.retrieval import Index

    given = {"text": text, "image": image, "audio": audio}
    chosen = [(kind, value) for kind, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise DataError("give exactly one query: --text, --image or --audio")
    kind, value = chosen[0]
    index = Index.load(index_dir)
    predictor = Predictor(index.model_dir)
    columns = [n for n, m in predictor.preprocessor.inputs.items() if m.value == kind]
    if not columns:
        raise DataError(f"the model has no {kind} input; its inputs: {dict(predictor.preprocessor.inputs)}")
    query = {columns[0]: str(Path(value).resolve()) if kind != "text" else value}
    hits = predictor.search(index, query, target=modality, k=k)
    columns = [c for c in hits.columns if c not in ("rank", "score", "row")]
    for hit in hits.to_dict("records"):
        cells = "  ".join(f"{c}={_short(hit[c])}" for c in columns)
        console.print(f"{hit['rank']:>3}. {hit['score']:.4f}  row {hit['row']}  {cells}", markup=False)


def _short(value: object, width: int = 40) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("serve")
def serve_command(
    model_dir: Annotated[Path, typer.Argument(help="model directory (RUN_DIR/model)")],
    host: Annotated[
        str, typer.Option(help="address to listen on; non-loopback needs --api-keys")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_keys: Annotated[
        Path | None,
        typer.Option(help="file of API keys, one per line (or sha256:<hex>); also $POLYFUSE_API_KEYS"),
    ] = None,
    workers: Annotated[int, typer.Option(help="processes behind the one port, each with its own model")] = 1,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="allow a non-loopback address without keys")
    ] = False,
    batching: Annotated[bool, typer.Option(help="merge concurrent requests into one forward pass")] = True,
    max_batch_rows: Annotated[int, typer.Option(help="rows per forward pass")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(help="how long a request waits for others to batch with")
    ] = 5.0,
    max_pending: Annotated[int, typer.Option(help="requests in progress before 503 + Retry-After")] = 64,
    timeout: Annotated[float, typer.Option(help="seconds before a request gets 504")] = 30.0,
    max_body_mb: Annotated[float, typer.Option(help="request body limit, MB")] = 20.0,
    max_rows: Annotated[int, typer.Option(help="rows per request")] = 256,
    index: Annotated[
        Path | None,
        typer.Option(help="an index built with this model (polyfuse index build): POST /v1/search"),
    ] = None,
) -> None:
    """Serve MODEL_DIR over HTTP: POST /v1/predict (supervised), /v1/embed (contrastive), /v1/consistency
    (matching), /v1/search (with --index), GET /v1/model, /healthz, /readyz, /metrics, and a playground
    page at /. Needs the serve extra: pip install 'polyfuse[serve]'."""
    try:
        from polyfuse.serve import serve
        from polyfuse.serve.auth import load_key_hashes
        from polyfuse.serve.settings import Batching, Limits, ServeSettings
    except ImportError as e:
        raise DataError(
            f"polyfuse serve needs the serve extra ({e.name} is missing): pip install 'polyfuse[serve]'"
        ) from None

    settings = ServeSettings(
        host=host,
        port=port,
        workers=workers,
        api_key_hashes=load_key_hashes(api_keys),
        insecure_no_auth=insecure_no_auth,
        index_dir=index,
        limits=Limits(max_body_bytes=int(max_body_mb * 1_000_000), max_rows=max_rows),
        batching=Batching(
            enabled=batching,
            max_batch_rows=max_batch_rows,
            max_wait_ms=max_wait_ms,
            max_pending=max_pending,
            request_timeout_s=timeout,
        ),
    )
    serve(model_dir, settings)


class _HelpConventions:
    """Help in the conventions most command lines follow (Typer's newer style showed `{table}` next to
    `{CONFIG}` and a `<bool>` after every flag): arguments as TABLE, optional ones as [TABLE]; on/off
    flags without a type; other options with click's type names (INTEGER, PATH, TEXT)."""

    def collect_usage_pieces(self: Any, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces + ([self.subcommand_metavar] if isinstance(self, TyperGroup) else [])

    def get_params(self: Any, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if param.param_type_name == "option" and param.metavar is None:
                param.metavar = "" if param.is_flag else _type_name(param, ctx)
        return params


_TYPE_NAMES = {"int": "INTEGER", "str": "TEXT", "float": "FLOAT", "path": "PATH", "bool": ""}


def _type_name(param: Any, ctx: Any) -> str:
    if getattr(param, "type", None) is not None:  # click's own parameter classes
        return str(param.type.name).upper()
    shown = str(param.display_type(ctx)).strip("<>")  # Typer's: "<int>", "<list[str]>", "<clean|noisy>"
    inner = shown.removeprefix("list[").removesuffix("]")
    return _TYPE_NAMES.get(inner.lower(), inner.upper() if "|" not in inner else f"[{inner}]")


class _Command(_HelpConventions, TyperCommand):
    pass


class _Group(_HelpConventions, TyperGroup):
    pass


for _typer in (app, data_app, datasets_app, build_app):
    _typer.info.cls = _Group
    for _command in _typer.registered_commands:
        if _command.cls in (None, TyperCommand):
            _command.cls = _Command


def _plain_print(*objects: object) -> None:
    """Library messages are plain text: brackets in them (a path, a list) are not rich markup."""
    console.print(*objects, markup=False, highlight=False)


def main() -> None:
    """Entry point: user-data errors print as a clear message and exit 2, never as a traceback."""
    no_collections_at_exit()
    try:
        app()
    except DataError as e:
        err_console.print(f"[bold red]error:[/bold red] {e}", markup=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
