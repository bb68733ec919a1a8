"""Low-rank multimodal fusion (LMF, Liu et al. 2018): tensor fusion with rank-R factors.

Tensor fusion multiplies a weight tensor W of shape (D_1 + 1, ..., D_M + 1, out) with the outer product
of [z_m, 1]. LMF writes W as a sum of R rank-one terms, so the product never materialises:

    out = sum_r  w_r * prod_m ([z_m, 1] @ F_m[r])  + b,     F_m: (R, D_m + 1, out)

The cost is linear in the number of inputs. The factors live in an nn.ParameterDict so that they are
registered and trained; MultiBench kept them in a plain Python list, which the optimizer never saw.
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


class LowRankFusion(nn.Module):
    """rank: number R of rank-one terms; dropout: on each pooled input before its factor."""

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits-N, bench/results/fusion_noisy_bf16.md

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        *,
        rank: int = 4,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dims = check_config("lowrank", input_dims, output_dim, modality_dropout)
        if rank < 1:
            raise ValueError(f"lowrank fusion: rank must be >= 1, got {rank}")
        self.output_dim = output_dim
        self.modality_dropout = modality_dropout
        self.missing = MissingModalityEmbedding(self.input_dims)
        self.dropout = nn.Dropout(dropout)
        # init so that each [z_m, 1] @ F_m[r] has about unit variance for unit-variance z_m: the product
        # over M inputs then neither vanishes nor explodes as M grows (xavier, as in LMF, shrinks it)
        self.factors = nn.ParameterDict(
            {
                module_key(n): nn.Parameter(torch.randn(rank, d + 1, output_dim) * (d + 1) ** -0.5)
                for n, d in self.input_dims.items()
            }
        )
        self.rank_weights = nn.Parameter(torch.randn(rank) * rank**-0.5)  # (R,)
        self.bias = nn.Parameter(torch.zeros(output_dim))

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        check_inputs(self.input_dims, features, present)
        present = modality_dropout(present, self.modality_dropout, training=self.training)
        pooled = self.missing.fill_pooled(features, present)  # name -> (B, D_m)
        fused: Tensor | None = None
        for n in self.input_dims:
            z = nn.functional.pad(self.dropout(pooled[n]), (0, 1), value=1.0)  # (B, D_m + 1)
            f = torch.einsum("bi,rio->rbo", z, self.factors[module_key(n)])  # (R, B, out)
            fused = f if fused is None else fused * f
        assert fused is not None  # check_config guarantees at least one input
        return torch.einsum("r,rbo->bo", self.rank_weights, fused) + self.bias  # (B, out)
