"""The one interface every encoder follows, and the few tensor helpers the encoder files share."""

from __future__ import annotations

from typing import ClassVar, Protocol, Self, runtime_checkable

import torch
from torch import Tensor, nn

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.outputs import EncoderOutput


@runtime_checkable
class Encoder(Protocol):
    """What fusions and models rely on. Every registered encoder is also an `nn.Module` (`EncoderModule`).

    output_dim: D of `EncoderOutput.tokens` (B, T, D) and `.pooled` (B, D)
    trainable:  False after `freeze()`: no parameter requires grad and the module stays in eval mode
    """

    output_dim: int
    trainable: bool

    def forward(self, batch: ModalityBatch) -> EncoderOutput: ...

    def freeze(self) -> None: ...


class EncoderModule(nn.Module):
    """The nn.Module half of `Encoder`: the `trainable` flag and freezing, nothing else.

    A frozen encoder stays in eval mode even when the model around it calls `.train()`, so BatchNorm running
    statistics don't drift and dropout stays off in a backbone whose weights are fixed. Subclasses set
    `output_dim`, build their layers, then call `self.freeze()` when constructed with `trainable=False`.
    """

    output_dim: int
    # True once the encoder's results were checked under bf16 autocast: `training.precision: auto` may
    # then train it in bf16 (see polyfuse.training.precision)
    trains_in_bf16: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.trainable = True

    def freeze(self) -> None:
        self.trainable = False
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Self:
        return super().train(mode and self.trainable)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over T of x (B, T, D) where mask (B, T) is True -> (B, D); zeros for rows with no True."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def key_padding_mask(token_mask: Tensor) -> Tensor:
    """nn.MultiheadAttention's key_padding_mask (True = ignore) from a token mask (True = real), (B, T).

    Rows with no real token (an absent input) may attend to position 0; otherwise softmax over nothing gives
    NaN. Their outputs are padding, which `masked_mean` and the fusions' masks ignore.
    """
    ignore = ~token_mask
    ignore[:, 0] &= token_mask.any(dim=1)
    return ignore


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool, True on the first `length` positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def full_mask(batch_size: int, length: int, device: torch.device) -> Tensor:
    """(B, T) all True: for encoders whose every token is real (images, pooled-only encoders)."""
    return torch.ones(batch_size, length, dtype=torch.bool, device=device)


def transformer_stack(d_model: int, num_layers: int, num_heads: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm transformer layers (batch_first) with a final LayerNorm, for the from-scratch encoders."""
    layer = nn.TransformerEncoderLayer(
        d_model,
        num_heads,
        dim_feedforward=4 * d_model,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    # enable_nested_tensor needs post-norm layers; with pre-norm it only warns, so turn it off.
    return nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
