"""Multi-process training on CPU (gloo): 2 processes reach the metrics of 1 process on the same global
batch, write one artifact, and resume after the whole process group is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from polyfuse.config import EncoderConfig, HeadConfig
from polyfuse.data.preprocess import PreprocessingConfig, Preprocessor
from polyfuse.data.schema import ColumnSchema, Modality, Role, TableSchema
from polyfuse.data.table import Table
from polyfuse.training.data import ShardedBatchSampler, make_loader, set_sampler_epoch

CLI = [sys.executable, "-m", "polyfuse.cli"]
# 1 process with batch 16 against 2 processes with batch 8 each: the same rows per optimizer step and the
# gradient of their mean, so the runs differ only by float summation order (measured: see the README).
METRIC_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-5


def small_numeric_table(rows: int) -> Table:
    frame = pd.DataFrame(
        {"x": np.arange(float(rows)), "label": ["a", "b"] * (rows // 2) + ["a"] * (rows % 2)}
    )
    return Table(frame, base_dir=Path("."))


def small_preprocessor(table: Table) -> Preprocessor:
    schema = TableSchema(
        columns=[ColumnSchema(name="x", kind=Modality.NUMERIC), ColumnSchema(name="label", kind=Role.LABEL)]
    )
    return Preprocessor.fit(table, schema, PreprocessingConfig(), {"label": None})


def test_processes_share_each_global_batch_of_one_process_and_follow_the_epoch() -> None:
    table = small_numeric_table(12)
    preprocessor = small_preprocessor(table)
    orders = {}
    for epoch in (0, 1):
        single = make_loader(table, preprocessor, batch_size=6, train=True, seed=3)
        set_sampler_epoch(single, epoch)
        expected = list(single.batch_sampler)  # type: ignore[arg-type]
        per_rank = []
        for rank in (0, 1):
            loader = make_loader(
                table, preprocessor, batch_size=3, train=True, seed=3, rank=rank, world_size=2
            )
            set_sampler_epoch(loader, epoch)
            assert loader.dataset.epoch == epoch  # type: ignore[attr-defined]  # augmentation follows
            per_rank.append(list(loader.batch_sampler))  # type: ignore[arg-type]
        # step by step, the processes' batches are the one process's batch, dealt out in turn
        assert [b[0::2] for b in expected] == per_rank[0] and [b[1::2] for b in expected] == per_rank[1]
        orders[epoch] = expected
    assert orders[0] != orders[1]


def test_a_short_last_batch_splits_unevenly_and_weighs_each_share_by_its_rows() -> None:
    table = small_numeric_table(9)  # global batch 8: one full batch, then 1 row for 2 processes
    preprocessor = small_preprocessor(table)
    samplers = [
        make_loader(table, preprocessor, batch_size=4, train=True, rank=r, world_size=2).batch_sampler
        for r in (0, 1)
    ]
    batches = [list(s) for s in samplers]  # type: ignore[arg-type]
    assert [len(b) for b in batches[0]] == [4, 1] and [len(b) for b in batches[1]] == [4, 1]
    assert batches[1][1] == batches[0][1]  # nothing left for rank 1: it repeats rank 0's row ...
    scales = [[s.loss_scale(i) for i in (0, 1)] for s in samplers]  # type: ignore[union-attr]
    assert scales == [[1.0, 2.0], [1.0, 0.0]]  # ... with weight 0, and rank 0's one row counts fully
    sampler = ShardedBatchSampler(samplers[0].sampler, 2, rank=1, world_size=2)  # type: ignore[union-attr]
    # 9 rows, global batch 4: the last row alone; 3 rows over 2 processes elsewhere would be 2 and 1
    assert [sampler.loss_scale(i) for i in range(3)] == [1.0, 1.0, 0.0]
    assert ShardedBatchSampler(samplers[0].sampler, 3, rank=1, world_size=2).loss_scale(1) == pytest.approx(
        2 * 1 / 3
    )
    with pytest.raises(ValueError, match="rank 2"):
        ShardedBatchSampler(samplers[0].sampler, 3, rank=2, world_size=2)


@pytest.fixture(scope="module")
def tabular_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 rows, numeric + category: 51 training rows, so the last global batch of 16 has 3 rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    frame = pd.DataFrame(
        {
            "a": x[:, 0].round(3),
            "b": x[:, 1].round(3),
            "c": x[:, 2].round(3),
            "kind": rng.choice(["p", "q", "r"], size=64),
            "label": np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no"),
        }
    )
    path = tmp_path_factory.mktemp("tabular") / "table.csv"
    frame.to_csv(path, index=False)
    return path


def write_config(table: Path, folder: Path, small_config: Any, epochs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = small_config(table, folder / "config.yaml", epochs=epochs)
    config = config.model_copy(
        update={
            "encoders": {
                "numeric": EncoderConfig(
                    name="numeric.mlp", options={"hidden_dim": 16, "output_dim": 16, "dropout": 0.0}
                ),
                "category": EncoderConfig(name="category.embedding", options={"output_dim": 8}),
            },
            # No dropout anywhere: one process draws a (16, D) mask, two processes two (8, D) masks from
            # their own streams, so with dropout the runs agree in distribution, not in weights.
            "fusion": config.fusion.model_copy(
                update={"name": "concat", "modality_dropout": 0.0, "options": {"dropout": 0.0}}
            ),
            "heads": {"label": HeadConfig(dropout=0.0)},
            "data": config.data.model_copy(update={"use_cache": False}),
            "training": config.training.model_copy(
                update={"batch_size": 16, "accelerator": "cpu", "early_stopping_patience": None}
            ),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config.to_yaml())
    return folder / "config.yaml"


def run(config: Path, output: Path, *extra: str, devices: int = 1) -> subprocess.CompletedProcess[str]:
    args = ["train", str(config), "-o", str(output), "-q", "--devices", str(devices)]
    if devices > 1:
        args += ["--strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *args, *extra], capture_output=True, text=True, env=env, check=False)


def metrics_of(run_dir: Path) -> dict[str, float]:
    """The test split's label metrics, and the number of training processes."""
    metrics = json.loads((run_dir / "model" / "metrics.json").read_text())
    values = {k: float(v) for k, v in metrics["test"]["label"].items() if isinstance(v, float)}
    return {**values, "processes": metrics["training"]["processes"]}


def val_losses(run_dir: Path) -> list[float]:
    """val_loss per epoch from the CSV log of the (first) run."""
    log = pd.read_csv(run_dir / "logs" / "csv" / "version_0" / "metrics.csv")
    return log["val_loss"].dropna().tolist()


@pytest.mark.slow
def test_two_processes_train_as_one_write_one_artifact_and_resume_after_sigkill(
    tabular_table: Path, small_config: Any, tmp_path: Path
) -> None:
    one_cfg = write_config(tabular_table, tmp_path / "one", small_config, epochs=3)
    done = run(one_cfg, tmp_path / "one" / "run")
    assert done.returncode == 0, done.stderr
    # 2 processes x batch 8: the global batch 16 of the single process
    two_cfg = write_config(tabular_table, tmp_path / "two", small_config, epochs=3)
    two_cfg.write_text(two_cfg.read_text().replace("batch_size: 16", "batch_size: 8"))
    done = run(two_cfg, tmp_path / "two" / "run", devices=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("model written to") == 1  # rank 1 reports nothing
    leftovers = [p.name for p in (tmp_path / "two" / "run").iterdir() if ".staging" in p.name]
    assert leftovers == []  # one model directory, written once
    single, double = metrics_of(tmp_path / "one" / "run"), metrics_of(tmp_path / "two" / "run")
    assert double["processes"] == 2 and single["processes"] == 1

    # The same trajectory: 51 training rows = 3 global batches of 16 and one of 3 (split 2 / 1 over the
    # processes), the same learning-rate schedule, validation on the same rows, so every epoch's
    # val_loss and the final weights agree up to float summation order.
    np.testing.assert_allclose(
        val_losses(tmp_path / "two" / "run"), val_losses(tmp_path / "one" / "run"), rtol=1e-5
    )
    one_weights = load_file(tmp_path / "one" / "run" / "model" / "model.safetensors")
    two_weights = load_file(tmp_path / "two" / "run" / "model" / "model.safetensors")
    assert one_weights.keys() == two_weights.keys()
    for name, weight in one_weights.items():
        torch.testing.assert_close(two_weights[name], weight, rtol=1e-4, atol=WEIGHT_TOLERANCE, msg=name)
    for name in ("accuracy", "macro_f1"):
        assert abs(double[name] - single[name]) <= METRIC_TOLERANCE, (name, double, single)

    # the same 2-process run, killed (every process of the group, SIGKILL) after an epoch, then resumed
    killed_cfg = write_config(tabular_table, tmp_path / "killed", small_config, epochs=3)
    killed_cfg.write_text(two_cfg.read_text())
    run_dir = tmp_path / "killed" / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = [*CLI, "train", str(killed_cfg), "-o", str(run_dir), "-q", "--devices", "2", "--strategy", "ddp"]
    process = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)  # kill at the first end-of-epoch checkpoint, two epochs before the end
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists(), "no epoch finished before the deadline"
    assert not (run_dir / "model").exists()
    done = run(killed_cfg, run_dir, "--resume", devices=2)
    assert done.returncode == 0, done.stderr
    resumed = metrics_of(run_dir)
    # the resumed run ends where the uninterrupted 2-process run ended
    for name in ("accuracy", "macro_f1"):
        assert abs(resumed[name] - double[name]) <= METRIC_TOLERANCE, (name, resumed, double)
