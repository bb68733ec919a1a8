"""Tensor fusion (TFN, Zadeh et al. 2017): outer product of [z_m, 1] over all inputs, then an MLP.

Appending 1 to every z_m keeps the unimodal terms, the pairwise products and every higher-order product
in one vector. Its size is (proj_dim + 1) ** M, so each input is first projected to a small proj_dim
(default 8: 729 features for 3 inputs). Beyond 1,000,000 features the constructor refuses; use "lowrank",
which approximates the same product with rank-R factors at a cost linear in M.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from polyfuse.models.fusion.missing import (
    MissingModalityEmbedding,
    check_config,
    check_inputs,
    modality_dropout,
    module_key,
)
from polyfuse.models.outputs import EncoderOutput

MAX_PRODUCT_SIZE = 1_000_000


class TensorFusion(nn.Module):
    """proj_dim: size d of each projected input (the product has (d + 1) ** M features); hidden_dim:
    width of the MLP on the product; dropout: on the product and inside the MLP."""

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits-N, bench/results/fusion_noisy_bf16.md

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        *,
        proj_dim: int = 8,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dims = check_config("tensor", input_dims, output_dim, modality_dropout)
        size = (proj_dim + 1) ** len(self.input_dims)
        if size > MAX_PRODUCT_SIZE:
            raise ValueError(
                f"tensor fusion of {len(self.input_dims)} inputs with proj_dim={proj_dim} has "
                f"({proj_dim} + 1) ** {len(self.input_dims)} = {size:,} features "
                f"(limit {MAX_PRODUCT_SIZE:,}). "
                "Lower proj_dim or use the 'lowrank' fusion, whose cost grows linearly with the inputs"
            )
        self.output_dim = output_dim
        self.modality_dropout = modality_dropout
        self.missing = MissingModalityEmbedding(self.input_dims)
        self.proj = nn.ModuleDict({module_key(n): nn.Linear(d, proj_dim) for n, d in self.input_dims.items()})
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(size, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        check_inputs(self.input_dims, features, present)
        present = modality_dropout(present, self.modality_dropout, training=self.training)
        pooled = self.missing.fill_pooled(features, present)  # name -> (B, D_m)
        product: Tensor | None = None
        for n in self.input_dims:
            z = self.proj[module_key(n)](pooled[n])  # (B, d)
            z = nn.functional.pad(z, (0, 1), value=1.0)  # (B, d + 1): [z, 1]
            # (B, P, 1) * (B, 1, d + 1) -> (B, P * (d + 1)), P = (d + 1) ** inputs so far
            product = z if product is None else (product[:, :, None] * z[:, None, :]).flatten(1)
        assert product is not None  # check_config guarantees at least one input
        out: Tensor = self.mlp(product)  # (B, output_dim)
        return out
