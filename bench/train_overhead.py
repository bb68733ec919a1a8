"""Training throughput: polyfuse (Lightning loop, our module, checkpoints, logging) against a plain
hand-written PyTorch loop training the same network on the same cached tensors, in the same run.

    .venv/bin/python bench/train_overhead.py

Three ways to train the AV-Digits default network (augmentation off, so every input comes from cache):
  plain      a for-loop over batches already in memory: forward, loss, backward, clip, AdamW, scheduler
  polyfuse   polyfuse's LightningModule + Trainer over the same in-memory batches, with its per-epoch
             atomic checkpoint and CSV logging
  pipeline   the same as polyfuse, but batches come through polyfuse's DataLoader from the feature cache
             (what `polyfuse train` does each epoch)
Throughput is taken over the epochs after the first (warm-up, Trainer set-up). The plain loop runs first
and last; its mean is the baseline. Writes bench/results/train_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from polyfuse.data.batch import Batch
from polyfuse.data.datasets import build_av_digits, default_data_dir
from polyfuse.data.prepare import prepare_data
from polyfuse.init_config import init_config
from polyfuse.models.model import build_model
from polyfuse.training.data import make_loader
from polyfuse.training.module import PolyfuseModule, warmup_cosine
from polyfuse.training.precision import resolve_precision

RESULTS = Path(__file__).parent / "results" / "train_overhead.json"


def plain_loop(config: Any, preprocessor: Any, batches: list[Batch], epochs: int) -> float:
    """Samples per second of a hand-written loop, at the precision the run resolves to (bf16 autocast or
    fp32, see polyfuse.training.precision)."""
    precision, _ = resolve_precision(config)
    bf16 = precision == "bf16-mixed"
    model = build_model(config, preprocessor)
    model.train()
    training = config.training
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay
    )
    total = epochs * len(batches)
    warmup = int(training.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup, training.min_lr_ratio)
    )
    durations = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.losses(model(batch), batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), training.gradient_clip)
            optimizer.step()
            scheduler.step()
        durations.append(time.perf_counter() - start)
    return steady_rate(durations, sum(len(b) for b in batches))


def steady_rate(durations: list[float], rows: int) -> float:
    """Samples/s over the epochs after the first (which pays one-off warm-up in both loops)."""
    steady = durations[1:] or durations
    return rows * len(steady) / sum(steady)


def lightning_loop(config: Any, preprocessor: Any, loader: Any, epochs: int, work: Path) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from polyfuse.training.checkpoint_io import AtomicCheckpointIO

    class EpochTimer(L.Callback):
        """Each training epoch's wall time, its checkpoint and logging included (it runs after them)."""

        def __init__(self) -> None:
            self.durations: list[float] = []
            self.start = 0.0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.durations.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    model = build_model(config, preprocessor)
    module = PolyfuseModule(
        model,
        config.training,
        total_steps=epochs * len(loader),
        extra_state={"config": config.to_yaml(), "preprocessing": preprocessor.to_json()},
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=config.training.gradient_clip,
        deterministic=config.training.deterministic,
        logger=CSVLogger(work, name="logs"),
        callbacks=[
            ModelCheckpoint(dirpath=work / "ckpt", filename="last", monitor=None, save_top_k=1),
            timer,
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=config.training.log_every_n_steps,
    )
    rows = sum(len(b) for b in loader)  # also warms the feature cache for the pipeline variant
    trainer.fit(module, loader)
    return steady_rate(timer.durations, rows)


def _unchanged(batch: Batch) -> Batch:
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=4, help="the first epoch is warm-up and not counted")
    args = parser.parse_args()
    torch.set_num_threads(2)
    # Lightning's deterministic=True (polyfuse's default) turns this on for the process; the plain loop
    # gets the same setting so both run the same kernels.
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = build_av_digits(work / "av", args.data or default_data_dir())
        config = init_config(table, ["label"], work / "config.yaml")
        prep = config.data.preprocessing
        prep = prep.model_copy(
            update={
                "image": prep.image.model_copy(
                    update={"augment": prep.image.augment.model_copy(update={"enabled": False})}
                ),
                "audio": prep.audio.model_copy(
                    update={"augment": prep.audio.augment.model_copy(update={"enabled": False})}
                ),
            }
        )
        data = config.data.model_copy(update={"preprocessing": prep, "cache_dir": work / "cache"})
        config = config.model_copy(update={"data": data})
        prepared = prepare_data(config.data, show_progress=False)
        preprocessor = prepared.preprocessor
        loader = make_loader(
            prepared.split("train"), preprocessor, batch_size=config.training.batch_size, train=False
        )
        batches = list(loader)  # the same cached tensors, in memory

        first = plain_loop(config, preprocessor, batches, args.epochs)
        # A DataLoader over the prebuilt batches, handing each through unchanged (Lightning takes loaders).
        in_memory_loader = DataLoader(batches, batch_size=None, collate_fn=_unchanged)  # type: ignore[arg-type]
        in_memory = lightning_loop(config, preprocessor, in_memory_loader, args.epochs, work / "a")
        pipeline = lightning_loop(config, preprocessor, loader, args.epochs, work / "b")
        last = plain_loop(config, preprocessor, batches, args.epochs)
    baseline = (first + last) / 2
    result = {
        "epochs": args.epochs,
        "train_rows": sum(len(b) for b in batches),
        "plain_loop_samples_per_s": round(baseline, 1),
        "plain_loop_runs": [round(first, 1), round(last, 1)],
        "polyfuse_in_memory_samples_per_s": round(in_memory, 1),
        "polyfuse_pipeline_samples_per_s": round(pipeline, 1),
        "polyfuse_in_memory_overhead_pct": round(100 * (baseline / in_memory - 1), 1),
        "polyfuse_pipeline_overhead_pct": round(100 * (baseline / pipeline - 1), 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
