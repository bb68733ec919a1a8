"""image.cnn: a small ResNet-style CNN trained from scratch, the default image encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.encoders.base import EncoderModule, full_mask
from polyfuse.models.outputs import EncoderOutput

# Not channels_last: keeping the CNN encoders' weights and activations NHWC trained the default AV-Digits
# network 1.34x faster in fp32 (issue 14, 2-core AMD EPYC), but torch 2.13's CPU backward of a strided 1x1
# conv (this file's downsampling shortcut) corrupts the heap on NHWC inputs with 2 threads and a batch
# smaller than the one before (e.g. 8 -> 16 channels, batch 16 then 13: "free(): invalid next size").


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv (no bias: BatchNorm has one) + BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (a strided 1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = conv_bn(out_channels, out_channels, 3, 1)
        same_shape = stride == 1 and in_channels == out_channels
        self.shortcut = nn.Identity() if same_shape else conv_bn(in_channels, out_channels, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv1(x))
        return F.relu(self.conv2(y) + self.shortcut(x))


class ImageCNN(EncoderModule):
    """Stem conv, then one stage per width; every stage after the first halves H and W.

    With the defaults a (B, 3, 224, 224) image gives a 28 x 28 map: 784 tokens of D = widths[-1].
    """

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits and AV-Digits-N (issue 14)

    def __init__(
        self,
        in_channels: int = 3,  # 1 for greyscale (L), 3 for RGB
        widths: Sequence[int] = (32, 64, 128),  # channels per stage; D = widths[-1]
        blocks_per_stage: int = 2,
        stem_stride: int = 2,  # 2 halves H, W once more before the stages (as ResNet's stem does)
        trainable: bool = True,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("image.cnn: widths must name at least one stage, e.g. (32, 64, 128)")
        self.in_channels = in_channels
        self.output_dim = widths[-1]
        self.stem = nn.Sequential(conv_bn(in_channels, widths[0], 3, stem_stride), nn.ReLU())
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResidualBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        if not trainable:
            self.freeze()

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        images = batch.values  # (B, C, H, W)
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"image.cnn: expected images (B, {self.in_channels}, H, W), got {tuple(images.shape)}; "
                "set in_channels to 1 for greyscale or 3 for RGB"
            )
        features = self.blocks(self.stem(images))  # (B, D, H', W')
        tokens = features.flatten(2).transpose(1, 2)  # (B, H'*W', D)
        pooled = tokens.mean(dim=1)  # (B, D) global average pool
        mask = full_mask(tokens.shape[0], tokens.shape[1], tokens.device)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=pooled)
