"""The LightningModule: a training step you can read top to bottom; Lightning owns the loop."""

from __future__ import annotations

import math
import re
from typing import Any

import lightning as L
import torch
from torch import Tensor

from polyfuse.config import TrainingConfig
from polyfuse.data.batch import Batch
from polyfuse.models.model import ModelOutput, MultimodalModel
from polyfuse.training.data import set_sampler_epoch, sharded_batch_sampler


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine down to `min_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


PEFT_PARAMETER_TAGS = ("lora_", "ia3_")
LAYER_INDEX = re.compile(r"\.(?:layer|layers|block|blocks)\.(\d+)\.")


def pretrained_parameters(model: MultimodalModel) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the pretrained encoders: Hugging Face backbones (a `name_or_path`) and encoders
    whose weights came from another model (`init_from` sets `pretrained_from`), less the LoRA / IA3
    parameters peft adds to them (new layers, trained like the heads)."""
    found = []
    for key, encoder in model.encoders.items():
        if hasattr(encoder, "name_or_path") or hasattr(encoder, "pretrained_from"):
            found += [
                (f"encoders.{key}.{n}", p)
                for n, p in encoder.named_parameters()
                if not any(tag in n for tag in PEFT_PARAMETER_TAGS)
            ]
    return found


def learning_rate_scales(model: MultimodalModel, decay: float) -> dict[str, float]:
    """Layer-wise learning-rate decay (Clark et al. 2020) in each pretrained encoder of L layers: layer l
    (0-based) trains at decay^(L - 1 - l), the embeddings at decay^L, everything above the layers (final
    norm, pooler) at 1. Parameter name -> multiplier; names not listed train at 1."""
    if decay == 1.0:
        return {}
    scales = {}
    named = pretrained_parameters(model)
    for key in model.encoders:
        prefix = f"encoders.{key}."
        own = [(n, p) for n, p in named if n.startswith(prefix)]
        layers = [int(m.group(1)) for n, _ in own if (m := LAYER_INDEX.search(n))]
        if not layers:
            continue
        depth = max(layers) + 1
        for name, _ in own:
            match = LAYER_INDEX.search(name)
            if match:
                scales[name] = decay ** (depth - 1 - int(match.group(1)))
            elif "embed" in name:
                scales[name] = decay**depth
    return scales


class PolyfuseModule(L.LightningModule):
    """Runs the model's objectives; knows nothing of any one of them."""

    def __init__(
        self,
        model: MultimodalModel,
        training: TrainingConfig,
        *,
        total_steps: int,
        extra_state: dict[str, Any] | None = None,
        encoder_learning_rates: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.training_config = training
        self.total_steps = total_steps
        self.extra_state = extra_state or {}  # saved into every checkpoint (config, preprocessing)
        # input name → learning rate of its encoder, where the config sets one
        self.encoder_learning_rates = encoder_learning_rates or {}
        # gradual unfreezing: the pretrained encoders' trainable parameters wait for their epoch
        self.waiting: list[torch.nn.Parameter] = []
        if training.unfreeze_after_epochs is not None:
            self.waiting = [p for _, p in pretrained_parameters(model) if p.requires_grad]
            for p in self.waiting:
                p.requires_grad_(False)

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
        set_sampler_epoch(self.trainer.train_dataloader, self.current_epoch)
        unfreeze_at = self.training_config.unfreeze_after_epochs
        if unfreeze_at is not None:
            for p in self.waiting:  # (again after a resume past that epoch)
                p.requires_grad_(self.current_epoch >= unfreeze_at)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, losses = self._losses(batch)
        self.log_dict(
            {f"train_{k}": v.detach() for k, v in losses.items()},
            on_step=True,
            on_epoch=True,
            batch_size=len(batch),
            prog_bar=False,
        )
        sharded = sharded_batch_sampler(self.trainer.train_dataloader)
        if sharded is None or sharded.world_size == 1:
            return losses["loss"]
        # This process's mean loss, weighed by its share of the global batch: DDP's averaged gradient is
        # then that of the mean over the global batch, also when the last batch splits unevenly.
        return losses["loss"] * sharded.loss_scale(batch_idx)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        output, losses = self._losses(batch)
        metrics = {f"val_{k}": v for k, v in losses.items()}
        for name in self.model.objectives:
            step = self.model.objective(name).step_metrics(output, batch)
            metrics.update({f"val_{k}": v for k, v in step.items()})
        self.log_dict(metrics, on_epoch=True, batch_size=len(batch), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        cfg = self.training_config
        waiting = {id(p) for p in self.waiting}
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        scales = learning_rate_scales(self.model, cfg.layer_decay)
        encoder_rates = {self.model.input_keys[n]: lr for n, lr in self.encoder_learning_rates.items()}
        pretrained = {id(p) for _, p in pretrained_parameters(self.model)}
        for name, p in self.model.named_parameters():
            if not p.requires_grad and id(p) not in waiting:
                continue
            key = name.split(".")[1] if name.startswith("encoders.") else None
            if key is not None and key in encoder_rates:
                lr = encoder_rates[key]
            elif id(p) in pretrained:
                lr = cfg.encoder_learning_rate or cfg.learning_rate
            else:
                lr = cfg.learning_rate  # new layers: fusion, heads, adapters, from-scratch encoders
            lr *= scales.get(name, 1.0)
            # Biases, norms, embeddings and learned missing-modality vectors are not weight-decayed.
            no_decay = p.ndim < 2 or "missing" in name or "embed" in name
            groups.setdefault((lr, 0.0 if no_decay else cfg.weight_decay), []).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
            lr=cfg.learning_rate,
        )
        warmup = int(cfg.warmup_fraction * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.total_steps, warmup, cfg.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["polyfuse"] = dict(self.extra_state)
