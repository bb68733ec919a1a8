"""The command line as a newcomer meets it, through the real `polyfuse` process: exit codes, messages,
complete validation, quiet and informative output, sane splits (issue 16)."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import polyfuse
from polyfuse.data.errors import DataError

CLI = [sys.executable, "-m", "polyfuse.cli"]
ROOT = Path(__file__).resolve().parents[1]
# What third-party libraries printed into every run before: none of it is something a user can act on.
NOISE = (
    "LOAD REPORT",
    "Loading weights",
    "Writing model shards",
    "in eval mode",
    "LeafSpec",
    "deprecated",
    "logging interval",
    "Traceback",
)


def run_cli(*args: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def make_table(folder: Path, rows: int = 60, seed: int = 0) -> Path:
    """A user's own small table: a review (text), a photo (image), a price, a colour and a numeric score."""
    rng = np.random.default_rng(seed)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        shade = int(rng.integers(0, 255))
        Image.fromarray(np.full((8, 8), shade, dtype=np.uint8)).save(folder / "photos" / f"{i}.png")
        price = round(float(rng.normal(10, 3)), 2)
        records.append(
            {
                "review": f"item {i} was {'great' if i % 2 else 'poor'} and {['cheap', 'pricey', 'fine'][i % 3]}",
                "photo": f"photos/{i}.png",
                "price": price,
                "colour": ["red", "green", "blue"][i % 3],
                "score": round(0.5 * price + shade / 100 + float(rng.normal(0, 0.3)), 3),
            }
        )
    path = folder / "shop.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    make_table(folder)
    return folder


@pytest.fixture(scope="module")
def env(work: Path) -> dict[str, str]:
    return {"POLYFUSE_CACHE_DIR": str(work / "cache")}


@pytest.fixture(scope="module")
def config(work: Path, env: dict[str, str]) -> Path:
    result = run_cli("init", "shop.csv", "--target", "score", "-o", "config.yaml", cwd=work, **env)
    assert result.returncode == 0, result.stderr
    return work / "config.yaml"


@pytest.fixture(scope="module")
def trained(work: Path, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One real run, as `polyfuse train` runs with its output going to a file (not a terminal)."""
    result = run_cli("train", "config.yaml", "-o", "run", "--epochs", "2", cwd=work, **env)
    assert result.returncode == 0, result.stderr
    return result


def edited(config: Path, name: str, edit: Any) -> Path:
    raw = yaml.safe_load(config.read_text())
    edit(raw)
    path = config.parent / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# Regression gets validation and test rows; empty splits are refused unless asked for.


def test_numeric_target_is_split_into_train_val_and_test(
    work: Path, config: Path, env: dict[str, str]
) -> None:
    result = run_cli("data", "inspect", "shop.csv", "--target", "score", cwd=work, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "splits: train 48, val 6, test 6" in result.stdout
    assert "'score' is numeric (regression): min" in result.stdout
    assert "class balance of 'score'" not in result.stdout


def test_train_and_evaluate_use_the_held_out_rows(
    work: Path, trained: subprocess.CompletedProcess[str], env: dict[str, str]
) -> None:
    assert "table shop.csv: 60 rows (train 48, val 6, test 6)" in trained.stdout
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["val"]["score"]["rows"] == 6 and metrics["test"]["score"]["rows"] == 6
    # Without --split, the training table would be scored with the rows it was trained on: refused.
    whole = run_cli("evaluate", "run/model", "shop.csv", cwd=work, **env)
    assert whole.returncode == 2
    assert "the table the model was trained on" in whole.stderr and "--split test" in whole.stderr
    # --split test draws the training run's split again: the same 6 rows, the same score.
    test = run_cli("evaluate", "run/model", "shop.csv", "--split", "test", cwd=work, **env)
    assert test.returncode == 0, test.stderr
    assert "score (6 rows)" in test.stdout
    assert f"mae {metrics['test']['score']['mae']:.4f}" in test.stdout
    everything = run_cli("evaluate", "run/model", "shop.csv", "--split", "all", cwd=work, **env)
    assert everything.returncode == 0 and "score (60 rows)" in everything.stdout


def test_an_empty_split_is_refused_unless_asked_for(work: Path, config: Path, env: dict[str, str]) -> None:
    tiny = work / "tiny"
    make_table(tiny, rows=4)

    def to_tiny(raw: dict[str, Any]) -> None:
        raw["data"]["table"] = "tiny/shop.csv"

    path = edited(config, "tiny.yaml", to_tiny)
    result = run_cli("validate", path, cwd=work, **env)
    assert result.returncode == 2
    assert "the test split is empty (4 rows: train 3, val 1, test 0)" in result.stderr
    trained = run_cli("train", path, "-o", "tiny_run", cwd=work, **env)
    assert trained.returncode == 2 and "the test split is empty" in trained.stderr
    assert not (work / "tiny_run").exists()

    def no_test(raw: dict[str, Any]) -> None:
        to_tiny(raw)
        raw["data"]["split"]["fractions"] = [0.75, 0.25, 0.0]

    asked = run_cli("validate", edited(config, "tiny_no_test.yaml", no_test), cwd=work, **env)
    assert asked.returncode == 0, asked.stderr


# validate runs every check train runs, all in one pass.


def test_validate_reports_four_mistakes_at_once(work: Path, config: Path, env: dict[str, str]) -> None:
    def four_mistakes(raw: dict[str, Any]) -> None:
        raw["training"]["epoch"] = raw["training"].pop("epochs")
        raw["training"]["batch_size"] = -1
        raw["encoders"]["photo"]["name"] = "image.cnnn"
        raw["fusion"]["name"] = "gatd"

    result = run_cli("validate", edited(config, "four.yaml", four_mistakes), cwd=work, **env)
    assert result.returncode == 2
    assert "4 problem(s) found" in result.stderr
    assert "field 'training.epoch': not a field (did you mean 'epochs'?)" in result.stderr
    assert "field 'training.batch_size'" in result.stderr
    assert "unknown encoder 'image.cnnn' (did you mean 'image.cnn'?)" in result.stderr
    assert "unknown fusion 'gatd' (did you mean 'gated'?)" in result.stderr
    # train stops on the same four, before any work
    trained = run_cli("train", "four.yaml", "-o", "four_run", cwd=work, **env)
    assert trained.returncode == 2 and "4 problem(s) found" in trained.stderr
    assert not (work / "four_run").exists()


def test_option_values_are_field_errors_in_validate_and_in_python(
    work: Path, config: Path, env: dict[str, str]
) -> None:
    def bad_values(raw: dict[str, Any]) -> None:
        raw["encoders"]["photo"]["options"] = {"widths": [-8, 16]}
        raw["fusion"]["name"] = "cross_attention"
        raw["fusion"]["options"] = {"d_model": 100, "num_heads": 3}

    path = edited(config, "values.yaml", bad_values)
    result = run_cli("validate", path, cwd=work, **env)
    assert result.returncode == 2
    assert "field 'encoders.photo.options': image.cnn cannot be built" in result.stderr
    assert "field 'fusion.options': cross_attention cannot be built" in result.stderr
    assert "not divisible by num_heads=3" in result.stderr
    assert "Traceback" not in result.stderr
    # polyfuse.train(config) runs the same checks before any work
    with pytest.raises(DataError, match=r"field 'encoders\.photo\.options'") as info:
        polyfuse.train(polyfuse.load_config(path), work / "python_run", log=lambda *_: None)
    assert "field 'fusion.options'" in str(info.value)
    assert not (work / "python_run").exists()


def test_a_table_train_cannot_use_is_refused_by_init_and_validate(
    work: Path, config: Path, env: dict[str, str]
) -> None:
    (work / "header_only.csv").write_text("review,photo,price,colour,score\n")
    result = run_cli("init", "header_only.csv", "--target", "score", "-o", "h.yaml", cwd=work, **env)
    assert result.returncode == 2
    assert "has a header (review, photo, price, colour, score) but no rows" in result.stderr
    assert not (work / "h.yaml").exists()

    def header_only(raw: dict[str, Any]) -> None:
        raw["data"]["table"] = "header_only.csv"

    result = run_cli("validate", edited(config, "h.yaml", header_only), cwd=work, **env)
    assert result.returncode == 2 and "but no rows" in result.stderr

    # a table whose only columns are an id and the target has nothing to learn from
    pd.DataFrame({"id": range(30), "score": np.linspace(0, 1, 30)}).to_csv(
        work / "no_inputs.csv", index=False
    )
    result = run_cli("init", "no_inputs.csv", "--target", "score", "-o", "n.yaml", cwd=work, **env)
    assert result.returncode == 2 and "no input columns" in result.stderr


def test_a_bad_column_under_data_columns_is_reported_once(
    work: Path, config: Path, env: dict[str, str]
) -> None:
    def bad_column(raw: dict[str, Any]) -> None:
        raw["data"]["columns"]["reveiw"] = raw["data"]["columns"].pop("review")

    result = run_cli("validate", edited(config, "column.yaml", bad_column), cwd=work, **env)
    assert result.returncode == 2
    assert result.stderr.count("reveiw") == 2  # the field name and the column, on one line
    assert "field 'data.columns.reveiw': column 'reveiw' is not in the table (did you mean 'review'?)" in (
        result.stderr
    )


# data inspect: a non-zero exit when it found problems; an empty table is its own error.


def test_inspect_exit_status(work: Path, env: dict[str, str]) -> None:
    broken = work / "broken"
    table = make_table(broken, rows=30)
    (broken / "photos" / "3.png").write_bytes(b"not a png")
    result = run_cli("data", "inspect", table, **env)
    assert result.returncode == 1
    assert "1 problem(s) in 1 row(s)" in result.stdout and "row 3, column 'photo'" in result.stdout
    assert "--drop-invalid to drop those 1 row(s) (29 remain)" in result.stdout

    (work / "empty_rows.csv").write_text("review,score\n")
    result = run_cli("data", "inspect", work / "empty_rows.csv", **env)
    assert result.returncode == 2
    assert "but no rows" in result.stderr and "--drop-invalid" not in result.stdout + result.stderr


# Messages


def test_target_typo_gets_a_suggestion(work: Path, env: dict[str, str]) -> None:
    result = run_cli("init", "shop.csv", "--target", "scor", "-o", "typo.yaml", cwd=work, **env)
    assert result.returncode == 2
    assert "--target 'scor' is not a column of the table (did you mean 'score'?)" in result.stderr
    assert "override" not in result.stderr


def test_non_utf8_and_empty_files_say_what_to_do(work: Path, env: dict[str, str]) -> None:
    frame = pd.read_csv(work / "shop.csv")
    frame["review"] = "café " + frame["review"]
    frame.to_csv(work / "latin.csv", index=False, encoding="cp1252")
    result = run_cli("data", "inspect", "latin.csv", cwd=work, **env)
    assert result.returncode == 2
    assert "not UTF-8 text: byte 0xe9 on line 2" in result.stderr
    assert "pass --encoding cp1252" in result.stderr and "codec" not in result.stderr
    fixed = run_cli("data", "inspect", "latin.csv", "--encoding", "cp1252", cwd=work, **env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    init = run_cli(
        "init", "latin.csv", "-t", "score", "--encoding", "cp1252", "-o", "latin.yaml", cwd=work, **env
    )
    assert init.returncode == 0, init.stderr
    assert yaml.safe_load((work / "latin.yaml").read_text())["data"]["encoding"] == "cp1252"

    (work / "empty.csv").write_text("")
    result = run_cli("data", "inspect", "empty.csv", cwd=work, **env)
    assert result.returncode == 2
    assert "the file is empty (not even a header row)" in result.stderr
    assert "No columns to parse" not in result.stderr


# Output


def test_train_output_is_a_summary_and_one_line_per_epoch(trained: subprocess.CompletedProcess[str]) -> None:
    out = trained.stdout
    assert "learning_rate:" not in out and "resolved config saved to run/config.yaml" in out  # not printed
    assert (
        "inputs: category (category.embedding), numeric (numeric.mlp), photo (image.cnn), "
        "review (text.minilm, frozen)" in out
    )
    assert "targets: score (regression)" in out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all(" loss " in line and " val_loss " in line and line.endswith(" s") for line in epochs)
    assert "test score: mae" in out
    for noise in NOISE:
        assert noise not in out + trained.stderr, noise


def test_on_a_terminal_verbose_prints_the_config_and_the_bar_fits_100_columns(
    work: Path, config: Path, env: dict[str, str]
) -> None:
    """Under a pseudo-terminal 100 columns wide, as a user's shell would run it; a classification target,
    so the bar also carries a validation accuracy."""
    init = run_cli("init", "shop.csv", "--target", "colour", "-o", "colour.yaml", cwd=work, **env)
    assert init.returncode == 0, init.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*CLI, "train", "colour.yaml", "-o", "tty_run", "--epochs", "1", "--verbose"],
        cwd=work,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, **env, "COLUMNS": "100", "LINES": "40", "TERM": "xterm"},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=600) == 0
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "resolved config" in screen and "learning_rate: 0.002" in screen
    # the bar's metric fields, whole, values included: training loss, validation loss and accuracy
    bar = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen).replace("\r", "\n")
    assert re.search(r"Epoch 1/1 .* loss: \d+\.\d+ val_loss: \d+\.\d+\s+colour_acc: \d\.\d+", bar), bar[
        -2000:
    ]
    assert "…" not in bar  # nothing cut off
    for noise in NOISE:
        assert noise not in screen, noise


# Help, --version


def test_help_names_arguments_as_the_docs_do_and_lists_choices() -> None:
    inspect_help = run_cli("data", "inspect", "--help")
    assert inspect_help.returncode == 0
    assert "Usage: python -m polyfuse.cli data inspect [OPTIONS] TABLE" in inspect_help.stdout
    train_help = run_cli("train", "--help")
    assert "[OPTIONS] CONFIG" in train_help.stdout and "RUN_DIR" in train_help.stdout
    evaluate_help = run_cli("evaluate", "--help")
    assert "[OPTIONS] MODEL_DIR TABLE" in evaluate_help.stdout
    for text in (inspect_help.stdout, train_help.stdout, evaluate_help.stdout):
        assert "<bool>" not in text and "{" not in text
    from polyfuse.cli import FUSION_NAMES
    from polyfuse.models.fusion import list_fusions

    assert FUSION_NAMES.split(", ") == list_fusions()
    assert f"override fusion.name: {FUSION_NAMES}" in " ".join(train_help.stdout.split()).replace("│ ", "")


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"polyfuse {polyfuse.__version__}"


# Small things


def test_model_files_are_written_with_one_mode(work: Path, trained: subprocess.CompletedProcess[str]) -> None:
    model = work / "run" / "model"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in model.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.yaml"], modes
    assert len(set(modes.values())) == 1, modes


def test_datasets_build_names_the_flags(tmp_path: Path) -> None:
    result = run_cli(
        "datasets", "build", "av-digits", "--out", tmp_path / "av", "--mnist", tmp_path, "--fsdd", tmp_path
    )
    assert result.returncode == 2
    assert "pass it with --mnist" in result.stderr and "with --fsdd" in result.stderr
    assert "as `mnist`" not in result.stderr


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_gitignore_covers_what_the_readme_commands_write() -> None:
    paths = ["data/av/av_digits.csv", "config.yaml", "runs/av/model", "metrics.json", "predictions.csv"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert ignored.stdout.split() == paths
