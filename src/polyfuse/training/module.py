"""The LightningModule: a training step you can read top to bottom; Lightning owns the loop."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from polyfuse.config import TrainingConfig
from polyfuse.data.batch import Batch
from polyfuse.models.model import ModelOutput, MultimodalModel


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine down to `min_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PolyfuseModule(L.LightningModule):
    """Runs the model's objectives; knows nothing of any one of them."""

    def __init__(
        self,
        model: MultimodalModel,
        training: TrainingConfig,
        *,
        total_steps: int,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.training_config = training
        self.total_steps = total_steps
        self.extra_state = extra_state or {}  # saved into every checkpoint (config, preprocessing)

    def forward(self, batch: Batch) -> ModelOutput:
        output: ModelOutput = self.model(batch)
        return output

    def _losses(self, batch: Batch) -> tuple[ModelOutput, dict[str, Tensor]]:
        output = self(batch)
        return output, self.model.losses(output, batch)

    def on_train_epoch_start(self) -> None:
        # Dropout and modality dropout draw from the global RNG: seed it from (seed, epoch, rank) so an
        # epoch replays identically after a resume, without saving RNG streams.
        torch.manual_seed(self.training_config.seed * 100_003 + self.current_epoch * 101 + self.global_rank)
        # Lightning sets the sampler epoch from its progress counter, which after a resume from an
        # end-of-epoch checkpoint can lag by one; shuffling and augmentation must follow current_epoch.
        loader = self.trainer.train_dataloader
        for sampler in (
            getattr(loader, "sampler", None),
            getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        ):
            set_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.current_epoch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, losses = self._losses(batch)
        self.log_dict(
            {f"train_{k}": v.detach() for k, v in losses.items()},
            on_step=True,
            on_epoch=True,
            batch_size=len(batch),
            prog_bar=False,
        )
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        output, losses = self._losses(batch)
        metrics = {f"val_{k}": v for k, v in losses.items()}
        for name in self.model.objectives:
            step = self.model.objective(name).step_metrics(output, batch)
            metrics.update({f"val_{k}": v for k, v in step.items()})
        self.log_dict(metrics, on_epoch=True, batch_size=len(batch), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        cfg = self.training_config
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # Biases, norms, embeddings and learned missing-modality vectors are not weight-decayed.
            (no_decay if p.ndim < 2 or "missing" in name or "embed" in name else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate,
        )
        warmup = int(cfg.warmup_fraction * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.total_steps, warmup, cfg.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["polyfuse"] = dict(self.extra_state)
