"""What a training run shows while it runs: one line per epoch when the output is not a terminal (a log
file, CI), and on a terminal a progress bar whose metric fields fit in 100 columns."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar
from rich.progress import BarColumn


def headline_metrics(metrics: dict[str, Any], live: bool = False) -> dict[str, float]:
    """The few numbers worth reading while training: the training loss (the epoch's mean, or with `live`
    the last step's), the validation loss and each target's validation accuracy (the auxiliary per-input
    losses stay in the CSV / TensorBoard logs)."""
    shown: dict[str, float] = {}
    for name, value in metrics.items():
        if name == ("train_loss_step" if live else "train_loss_epoch"):
            shown["loss"] = float(value)
        elif name == "val_loss" or (name.startswith("val_") and name.endswith("_accuracy")):
            shown[name] = float(value)
    return dict(sorted(shown.items(), key=lambda item: (item[0] != "loss", item[0] != "val_loss", item[0])))


class EpochLog(Callback):
    """`epoch 3/20  loss 0.5120  val_loss 0.4310  val_label_accuracy 0.9000  12.3 s`, once per epoch."""

    def __init__(self, log: Callable[[str], Any]) -> None:
        self.write = log
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has run this epoch's validation by now, so callback_metrics holds its results too.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = "  ".join(f"{k} {v:.4f}" for k, v in headline_metrics(trainer.callback_metrics).items())
        seconds = time.perf_counter() - self.started
        self.write(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}  {seconds:.1f} s")


class CompactProgressBar(RichProgressBar):
    """Lightning's rich bar, narrower and with only the headline metrics under short names: with every
    auxiliary loss it ran past 100 columns and rich cut the fields off."""

    def configure_columns(self, trainer: L.Trainer) -> list[Any]:
        columns: list[Any] = []
        for column in super().configure_columns(trainer):
            if isinstance(column, BarColumn):
                column.bar_width = BAR_WIDTH
            # batches per second: room for the metrics instead (the time columns stay)
            if type(column).__name__ != "ProcessingSpeedColumn":
                columns.append(column)
        return columns

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning counts epochs from 0 ("Epoch 0/19"); the per-epoch log lines and the docs count from 1.
        return f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        return {
            # val_label_accuracy -> label_acc
            (
                k.removeprefix("val_").removesuffix("_accuracy") + "_acc" if k.endswith("_accuracy") else k
            ): round(v, 4)
            for k, v in headline_metrics(trainer.callback_metrics, live=True).items()
        }


BAR_WIDTH = 16  # columns of the bar itself (rich's default is 40)
