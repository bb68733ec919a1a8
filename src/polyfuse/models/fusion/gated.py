"""Gated fusion: a per-row softmax gate over the present inputs, weighted sum of their projections.

Each input m is projected to h_m (B, output_dim) and scores itself with a small gate g_m = w_m . h_m + b_m.
The gate softmax runs over the inputs present in the row only (absent ones get -inf), so the output is
a convex combination of what the row actually has, and `gate_weights` says how much each input counted.

A row with no input present at all (modality dropout never empties a row, but a row can arrive empty)
falls back to a softmax over every input's learned stand-in, so it still gets a finite, learned output.
Such rows are the only ones through which this fusion's stand-ins receive gradient.
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


class GatedFusion(nn.Module):
    """dropout: on the projected vectors, before gating."""

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits-N, bench/results/fusion_noisy_bf16.md

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        *,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dims = check_config("gated", input_dims, output_dim, modality_dropout)
        self.output_dim = output_dim
        self.modality_dropout = modality_dropout
        self.missing = MissingModalityEmbedding(self.input_dims)
        self.proj = nn.ModuleDict(
            {module_key(n): nn.Linear(d, output_dim) for n, d in self.input_dims.items()}
        )
        self.gate = nn.ModuleDict({module_key(n): nn.Linear(output_dim, 1) for n in self.input_dims})
        self.dropout = nn.Dropout(dropout)

    def _weights_and_values(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        pooled = self.missing.fill_pooled(features, present)  # name -> (B, D_m)
        names = list(self.input_dims)
        h = torch.stack([self.proj[module_key(n)](pooled[n]) for n in names], dim=1)  # (B, M, out)
        h = self.dropout(h)
        logits = torch.cat([self.gate[module_key(n)](h[:, i]) for i, n in enumerate(names)], dim=1)  # (B, M)
        mask = torch.stack([present[n] for n in names], dim=1)  # (B, M) bool
        mask = mask | ~mask.any(dim=1, keepdim=True)  # a row with nothing present gates over every stand-in
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)  # (B, M), 0 where absent
        return weights, h

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        check_inputs(self.input_dims, features, present)
        present = modality_dropout(present, self.modality_dropout, training=self.training)
        weights, h = self._weights_and_values(features, present)  # (B, M), (B, M, out)
        return (weights[..., None] * h).sum(dim=1)  # (B, out)

    def gate_weights(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        """Gate weights (B, M), inputs in sorted-name order: they sum to 1 over the present inputs of each
        row and are 0 for absent ones (all inputs share the weight in a row with none present). Modality
        dropout is not applied here: these are the weights for the inputs as given."""
        check_inputs(self.input_dims, features, present)
        return self._weights_and_values(features, present)[0]
