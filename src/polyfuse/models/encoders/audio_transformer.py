"""audio.transformer: a small transformer over log-mel frames with a Whisper-style front end, from scratch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.encoders.base import (
    EncoderModule,
    full_mask,
    key_padding_mask,
    masked_mean,
    transformer_stack,
)
from polyfuse.models.outputs import EncoderOutput


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> Tensor:
    """(length, dim) fixed sin/cos position encodings (Vaswani et al.); any length, no parameters."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))  # (D/2,)
    encoding = torch.zeros(length, dim, device=device)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return encoding


class AudioTransformer(EncoderModule):
    """(B, F, T) log-mel -> tokens (B, T/4, D): two stride-2 Conv1d (F -> D, then D -> D; the first is the
    per-frame Linear F -> D with a 3-frame context) cut the sequence 4x before attention, then sinusoidal
    positions and pre-norm transformer layers with a key padding mask. pooled = mean over real tokens."""

    def __init__(
        self,
        n_mels: int = 64,  # F: mel bins per frame, as the audio preprocessing produces them
        d_model: int = 128,  # D
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.1,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.output_dim = d_model
        self.conv1 = nn.Conv1d(n_mels, d_model, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.transformer = transformer_stack(d_model, num_layers, num_heads, dropout)
        if not trainable:
            self.freeze()

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        frames = batch.values  # (B, F, T)
        if frames.dim() != 3 or frames.shape[1] != self.n_mels:
            raise ValueError(
                f"audio.transformer: expected log-mel frames (B, {self.n_mels}, T), "
                f"got {tuple(frames.shape)}; set n_mels to the mel bins the audio preprocessing produces"
            )
        batch_size, _, length = frames.shape
        mask = (
            batch.token_mask if batch.token_mask is not None else full_mask(batch_size, length, frames.device)
        )
        # Keep padded frames at zero after each conv, so a row's output is the same however far it is padded;
        # a stride-2 conv's output frame i is real when input frame 2i is.
        x = frames * mask[:, None, :].to(frames.dtype)
        mask = mask[:, ::2]
        x = F.gelu(self.conv1(x)) * mask[:, None, :].to(x.dtype)  # (B, D, T/2)
        mask = mask[:, ::2]
        x = F.gelu(self.conv2(x)) * mask[:, None, :].to(x.dtype)  # (B, D, T/4)
        x = x.transpose(1, 2)  # (B, T', D)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        tokens = self.transformer(x, src_key_padding_mask=key_padding_mask(mask))  # (B, T', D)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=masked_mean(tokens, mask))
