"""`polyfuse.train(config, run_dir)`: prepare data, fit with Lightning, keep the best weights, save the model.

RUN_DIR/
  config.yaml            the resolved config (also inside every checkpoint)
  preprocessing.json     fitted on the training split
  checkpoints/last.ckpt  every epoch, atomically; `--resume` continues from here
  checkpoints/best.ckpt  the best epoch by `training.monitor`
  logs/                  metrics per epoch as CSV and TensorBoard event files
  model/                 the model directory (see polyfuse.artifact)

Several processes (`--devices N --num-nodes M`, torchrun, SLURM): every process prepares the data and
trains its shard of each batch; only the global rank 0 writes RUN_DIR files, the checkpoints (Lightning's
own rule) and the model directory.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.deterministic

from polyfuse.artifact import save_model
from polyfuse.atomic import atomic_write_text
from polyfuse.config import RunConfig, TrainingConfig
from polyfuse.data.errors import DataError
from polyfuse.data.prepare import PreparedData, effective_split, prepare_data
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.splits import empty_split_problems
from polyfuse.evaluation.evaluate import calibrate_objectives, fit_objectives_to_trained, score_objectives
from polyfuse.gc_freeze import long_lived_objects_frozen
from polyfuse.init_config import check_config
from polyfuse.models.model import (
    MultimodalModel,
    build_model,
    count_parameters,
    encoder_name,
    pretrained_inputs,
)
from polyfuse.training.data import make_loader
from polyfuse.training.init_from import init_from
from polyfuse.training.memory import HeapTrim, HeapTrimOnGrowth, map_large_allocations
from polyfuse.training.precision import resolve_precision

CHECKPOINTS = "checkpoints"


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, Any]
    epochs: int
    seconds: float
    parameters: int
    main_process: bool = True  # False on the other ranks of a multi-process run: they write nothing


def is_main_process() -> bool:
    """Global rank 0, known from the launcher's environment (RANK, SLURM_PROCID, LOCAL_RANK + NODE_RANK)
    before any process group exists; True for a single process."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0)) == 0


def make_strategy(training: TrainingConfig) -> Any:
    """Lightning's strategy for training.strategy: DDP tolerates parameters without a gradient unless
    told they never occur (find_unused_parameters); FSDP keeps the original parameters so that frozen
    and trainable ones can share a wrapped module."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    if training.strategy == "fsdp":
        return FSDPStrategy(use_orig_params=True)
    single = isinstance(training.devices, int) and training.devices * training.num_nodes == 1
    if training.strategy == "auto" and single:
        return "auto"
    return DDPStrategy(find_unused_parameters=training.find_unused_parameters)


@contextmanager
def _uninitialized_memory_left_unfilled() -> Iterator[None]:
    """torch's deterministic mode (training.deterministic) also fills the memory of every new tensor, so
    that an op reading memory it never wrote gives the same result each run. No op of a polyfuse model reads
    any (a filled NaN would surface in the loss), and the fill cost 3 % of the default AV-Digits step time;
    the exact-resume tests check that runs still replay bit for bit. The setting is restored after."""
    before = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = before  # type: ignore[attr-defined]


def train(
    config: RunConfig,
    run_dir: Path | str,
    *,
    resume: bool = False,
    show_progress: bool = True,
    log: Any = print,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train, evaluate on the validation and test splits, and write RUN_DIR/model.

    `callbacks`: extra Lightning callbacks, run after polyfuse's own (checkpoints, early stopping, EMA,
    progress), e.g. to send metrics to your own tracker."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from polyfuse.training.checkpoint_io import AtomicCheckpointIO
    from polyfuse.training.module import PolyfuseModule
    from polyfuse.training.progress_log import CompactProgressBar, EpochLog

    start = time.perf_counter()
    main = is_main_process()
    if not main:
        log = _silent  # one report per run, from rank 0
    # Every check `polyfuse validate` runs, before any work: a bad option value is a field error here,
    # not a traceback from a constructor after the data is featurised.
    problems = check_config(config)
    if problems:
        raise DataError(problems)
    if config.training.mmap_threshold_mb is not None:
        map_large_allocations(config.training.mmap_threshold_mb)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / CHECKPOINTS / "last.ckpt"
    resume_from = last if resume and last.exists() else None
    if resume and resume_from is None:
        log(f"no checkpoint at {last}: starting from scratch")

    # Inputs read by pretrained encoders get those encoders' own preprocessing (image processor, feature
    # extractor, tokenizer), decided before any row is featurised.
    prepared = prepare_data(
        config.data, show_progress=show_progress, pretrained=lambda inputs: pretrained_inputs(config, inputs)
    )
    if prepared.dropped_rows:
        log(f"dropped {len(prepared.dropped_rows)} invalid row(s) (--drop-invalid)")
    # Dropped rows can empty a split that had rows when the config was checked.
    empty = empty_split_problems(prepared.splits, effective_split(config.data, prepared.schema))
    if empty:
        raise DataError(empty)
    log(run_summary(config, prepared))
    preprocessor = prepared.preprocessor
    if resume_from is not None:
        # Continue with the preprocessing the run started with, exactly.
        saved = torch.load(resume_from, map_location="cpu", weights_only=True)["polyfuse"]
        preprocessor = Preprocessor.from_json(saved["preprocessing"], cache=preprocessor.cache)
    if main:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
        atomic_write_text(run_dir / "preprocessing.json", preprocessor.to_json())

    training = config.training
    train_table, val_table = prepared.split("train"), prepared.split("val")
    monitor = training.monitor if len(val_table) else "train_loss_epoch"
    mode = "max" if "accuracy" in monitor or "f1" in monitor else "min"
    trainer_callbacks: list[Any] = [
        # The best epoch by `monitor`, kept for the final model.
        ModelCheckpoint(
            dirpath=run_dir / CHECKPOINTS,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            enable_version_counter=False,
        ),
        # Every epoch, whether or not it improved: what `--resume` continues from. (Lightning's
        # save_last only writes when a monitored checkpoint is written, i.e. on improvement.)
        ModelCheckpoint(
            dirpath=run_dir / CHECKPOINTS,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
        ),
    ]
    if training.early_stopping_patience is not None:
        trainer_callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=training.early_stopping_patience)
        )
    if training.ema_decay is not None:
        # Swaps the average in for validation, so `monitor`, best.ckpt's "state_dict" and the saved model
        # are the averaged weights; the live weights ride along in the checkpoint for an exact --resume.
        trainer_callbacks.append(EMAWeightAveraging(decay=training.ema_decay))
    if training.trim_heap_on_growth is not None:
        trainer_callbacks.append(HeapTrimOnGrowth(training.trim_heap_on_growth))
    if training.trim_heap_every_n_steps is not None:
        trainer_callbacks.append(HeapTrim(training.trim_heap_every_n_steps))
    if show_progress:
        trainer_callbacks.append(CompactProgressBar(leave=True))
    else:
        trainer_callbacks.append(EpochLog(log))
    trainer_callbacks += list(callbacks)
    precision, why = resolve_precision(config)
    if training.precision == "auto":
        log(f"precision auto: {why}")
    _quiet_lightning()
    trainer = L.Trainer(
        max_epochs=training.epochs,
        accelerator=training.accelerator,
        devices=training.devices,
        num_nodes=training.num_nodes,
        strategy=make_strategy(training),
        precision=precision,  # type: ignore[arg-type]
        gradient_clip_val=training.gradient_clip,
        accumulate_grad_batches=training.accumulate_grad_batches,
        deterministic=training.deterministic,
        callbacks=trainer_callbacks,
        # CSV: one version folder per process (a resume starts version_1); TensorBoard appends.
        logger=[CSVLogger(run_dir / "logs", name="csv"), TensorBoardLogger(run_dir, name="logs", version="")],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=training.log_every_n_steps,
        default_root_dir=run_dir,
        # polyfuse shards the batches itself (ShardedBatchSampler): Lightning's DistributedSampler pads
        # the data with repeated rows and gives each process a mean of its own, so the processes'
        # averaged gradient is not that of the global batch.
        use_distributed_sampler=False,
    )
    loader_args = dict(batch_size=training.batch_size, seed=training.seed, num_workers=training.num_workers)
    train_loader = make_loader(
        train_table,
        preprocessor,
        train=True,
        group_by_length=training.group_by_length,
        length_group_batches=training.length_group_batches,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        **loader_args,  # type: ignore[arg-type]
    )
    # Every process validates on the whole split: the metrics that pick the best checkpoint and stop
    # early are then exactly one process's (a sharded split would need padding or uneven means).
    val_loader = make_loader(val_table, preprocessor, train=False, **loader_args) if len(val_table) else None  # type: ignore[arg-type]

    model = build_model(config, preprocessor)
    if model.fusion is None:
        log(f"fusion {config.fusion.name} not built: none of the objectives reads a fused vector")
    if training.init_from is not None:
        # also on a resume (whose checkpoint then replaces the weights): init_from marks the copied
        # encoders as pretrained, which sets their learning rate and unfreezing as in the first run
        copied = init_from(model, training.init_from)
        if resume_from is None:
            log(f"initialised from {training.init_from}: {', '.join(copied)}")
    if training.cache_frozen_outputs:
        cached = model.cache_frozen_encoders()
        if cached:
            log(f"frozen encoders run once per distinct row (outputs cached): {', '.join(cached)}")
    for name in model.objectives:
        model.objective(name).fit_data(train_table, preprocessor)
    trainable, total = count_parameters(model, trainable_only=True), count_parameters(model)
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f} %)")
    if training.unfreeze_after_epochs is not None and not (
        isinstance(training.devices, int) and training.devices * training.num_nodes == 1
    ):
        raise DataError(
            "training.unfreeze_after_epochs changes which parameters train mid-run, which DDP / FSDP cannot "
            "follow; unset it or train on one device"
        )
    steps_per_epoch = math.ceil(len(train_loader) / training.accumulate_grad_batches)
    module = PolyfuseModule(
        model,
        training,
        total_steps=steps_per_epoch * training.epochs,
        extra_state={"config": config.to_yaml(), "preprocessing": preprocessor.to_json()},
        encoder_learning_rates={
            n: e.learning_rate for n, e in config.encoders.items() if e.learning_rate is not None
        },
    )
    fit_start = time.perf_counter()
    with long_lived_objects_frozen(), _uninitialized_memory_left_unfilled():
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None)
    fit_seconds = time.perf_counter() - fit_start
    if not trainer.is_global_zero:
        # Every rank has the same weights; rank 0 alone evaluates and writes the model directory.
        params = count_parameters(module.model)
        return TrainResult(
            run_dir / "model", {}, int(trainer.current_epoch), time.perf_counter() - start, params, False
        )

    best = run_dir / CHECKPOINTS / "best.ckpt"
    if best.exists():
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    model = module.model.cpu().eval()
    # the training rows as they are (no augmentation); read only if an objective needs them
    train_rows = make_loader(train_table, preprocessor, batch_size=training.batch_size, train=False)
    fitted = fit_objectives_to_trained(model, train_rows)
    if fitted:
        log(f"fitted to the trained model's outputs on the training split: {', '.join(fitted)}")
    if val_loader is not None:
        calibrated = calibrate_objectives(model, val_loader)
        if calibrated:
            log(f"calibrated on the validation split: {', '.join(calibrated)}")
    metrics = evaluate_splits(model, prepared, preprocessor, training.batch_size)
    metrics["training"] = {
        "epochs": int(trainer.current_epoch),
        "seconds": round(time.perf_counter() - start, 1),
        "fit_seconds": round(fit_seconds, 2),  # the Lightning loop alone: training + validation epochs
        "processes": int(trainer.world_size),
        "train_rows": len(train_table),
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
    }
    model_dir = save_model(run_dir / "model", model, config, preprocessor, metrics)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return TrainResult(
        model_dir, metrics, int(trainer.current_epoch), time.perf_counter() - start, count_parameters(model)
    )


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def evaluate_splits(
    model: MultimodalModel, prepared: PreparedData, preprocessor: Preprocessor, batch_size: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for split in ("val", "test"):
        table = prepared.split(split)
        if len(table) == 0:
            continue
        loader = make_loader(table, preprocessor, batch_size=batch_size, train=False)
        results[split] = score_objectives(model, loader)
    return results


def _quiet_lightning() -> None:
    """Lightning's hints about workers and tips are noise for a CLI user; warnings of substance stay."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    # Frozen encoders are in eval mode on purpose (no dropout, fixed BatchNorm statistics).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # Lightning's own use of a torch API torch has deprecated: nothing a user can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    # A small table has fewer batches than the logging interval; epoch metrics are logged regardless.
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def run_summary(config: RunConfig, prepared: PreparedData) -> str:
    """A few lines on what is about to train (the whole resolved config is in RUN_DIR/config.yaml)."""
    counts = ", ".join(f"{name} {int((prepared.splits == name).sum())}" for name in ("train", "val", "test"))
    inputs = ", ".join(
        f"{name} ({encoder_name(config, name, modality)}"
        + ("" if (config.encoders.get(name) is None or config.encoders[name].trainable) else ", frozen")
        + ")"
        for name, modality in prepared.preprocessor.inputs.items()
    )
    targets = ", ".join(f"{t} ({spec.task})" for t, spec in prepared.preprocessor.state.targets.items())
    objectives = ", ".join(o.name for o in config.objectives)
    training = config.training
    return (
        f"table {config.data.table.name}: {len(prepared.table)} rows ({counts})\n"
        f"inputs: {inputs}\ntargets: {targets or 'none'}; objectives: {objectives}\n"
        f"fusion {config.fusion.name}; up to {training.epochs} epochs, batch size {training.batch_size}, "
        f"learning rate {training.learning_rate:g}"
    )
