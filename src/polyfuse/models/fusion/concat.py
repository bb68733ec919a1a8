"""Late fusion: project each input's pooled vector, concatenate, MLP.

The baseline every other fusion should beat (MultiBench "LF", TorchMultimodal ConcatFusionModule), with
one difference: an absent input is the learned stand-in from `MissingModalityEmbedding`, not an error.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from polyfuse.models.fusion.missing import (
    MissingModalityEmbedding,
    check_config,
    check_inputs,
    modality_dropout,
    module_key,
)
from polyfuse.models.outputs import EncoderOutput


class ConcatFusion(nn.Module):
    """hidden_dim: width of each projection and of the MLP; dropout: inside the MLP."""

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits-N, bench/results/fusion_noisy_bf16.md

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        *,
        hidden_dim: int = 256,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dims = check_config("concat", input_dims, output_dim, modality_dropout)
        self.output_dim = output_dim
        self.modality_dropout = modality_dropout
        self.missing = MissingModalityEmbedding(self.input_dims)
        self.proj = nn.ModuleDict(
            {module_key(n): nn.Linear(d, hidden_dim) for n, d in self.input_dims.items()}
        )
        self.mlp = nn.Sequential(
            nn.Linear(len(self.input_dims) * hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        check_inputs(self.input_dims, features, present)
        present = modality_dropout(present, self.modality_dropout, training=self.training)
        pooled = self.missing.fill_pooled(features, present)  # name -> (B, D_m)
        h = torch.cat([self.proj[module_key(n)](pooled[n]) for n in self.input_dims], dim=-1)  # (B, M*H)
        out: Tensor = self.mlp(h)  # (B, output_dim)
        return out
