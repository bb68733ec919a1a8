"""audio.cnn: a small 2-D ResNet-style CNN over log-mel frames, the default audio encoder.

Padding: after every conv the frames past a row's length are set back to zero, so that at a row's last
frames a conv sees the same zeros whether they come from the conv's own padding or from a longer batch.
With BatchNorm in eval mode a row's output therefore does not depend on how far the batch is padded. (In
train mode the batch statistics include the zeroed frames; that only shifts the normalisation slightly.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.encoders.base import EncoderModule, full_mask, masked_mean
from polyfuse.models.encoders.image_cnn import conv_bn
from polyfuse.models.outputs import EncoderOutput


def _zero_padding(x: Tensor, time_mask: Tensor) -> Tensor:
    """x (B, C, F, T) with frames where time_mask (B, T) is False set to 0."""
    return x * time_mask[:, None, None, :].to(x.dtype)


def _masked_relu(x: Tensor, time_mask: Tensor) -> Tensor:
    """relu(x) with padded frames set to 0, (B, C, F, T).

    The same values and gradients as masking relu's output (the mask is 0 or 1), with one activation
    fewer kept for backward: the multiply keeps only the mask, and the in-place relu's output, which its
    backward needs, is also the next conv's input. Masking after relu kept relu's output and the masked
    copy. On AV-Digits this is a third of audio.cnn's saved activations (peak memory, issue 14)."""
    return F.relu(_zero_padding(x, time_mask), inplace=True)


class MaskedResidualBlock(nn.Module):
    """ResidualBlock (see image_cnn) that keeps padded frames at zero; stride applies to F and T."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = conv_bn(out_channels, out_channels, 3, 1)
        same_shape = stride == 1 and in_channels == out_channels
        self.shortcut = nn.Identity() if same_shape else conv_bn(in_channels, out_channels, 1, stride)

    def forward(self, x: Tensor, time_mask: Tensor) -> tuple[Tensor, Tensor]:
        # A kernel-3 (or 1) conv with padding 1 (or 0) and stride s keeps input frames 0, s, 2s, ...: its
        # output frame i is real exactly when input frame s*i is.
        out_mask = time_mask[:, :: self.stride]  # (B, T / s)
        y = _masked_relu(self.conv1(x), out_mask)
        return _masked_relu(self.conv2(y) + self.shortcut(x), out_mask), out_mask


class AudioCNN(EncoderModule):
    """(B, F, T) log-mel -> one token per output time step (B, T', D), T' = T / (stem_stride * 2^(stages-1)).

    The frequency axis is averaged away after the last stage; pooled = mean over the real time steps.
    """

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits and AV-Digits-N (issue 14)

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),  # channels per stage; D = widths[-1]
        blocks_per_stage: int = 1,
        stem_stride: int = 2,  # with 3 stages: time stride 8, e.g. 100 frames/s -> 12.5 tokens/s
        trainable: bool = True,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("audio.cnn: widths must name at least one stage, e.g. (32, 64, 128)")
        self.output_dim = widths[-1]
        self.stem_stride = stem_stride
        self.stem = conv_bn(1, widths[0], 3, stem_stride)
        blocks: list[MaskedResidualBlock] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(MaskedResidualBlock(channels, width, stride))
                channels = width
        self.blocks = nn.ModuleList(blocks)
        if not trainable:
            self.freeze()

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        frames = batch.values  # (B, F, T)
        if frames.dim() != 3:
            raise ValueError(f"audio.cnn: expected log-mel frames (B, F, T), got {tuple(frames.shape)}")
        batch_size, _, length = frames.shape
        mask = (
            batch.token_mask if batch.token_mask is not None else full_mask(batch_size, length, frames.device)
        )
        x = _zero_padding(frames.unsqueeze(1), mask)  # (B, 1, F, T)
        mask = mask[:, :: self.stem_stride]
        x = _masked_relu(self.stem(x), mask)  # (B, C, F/s, T/s)
        for block in self.blocks:
            x, mask = block(x, mask)
        tokens = x.mean(dim=2).transpose(1, 2)  # (B, D, F', T') -> (B, D, T') -> (B, T', D)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=masked_mean(tokens, mask))
