"""numeric.mlp and category.embedding: encoders for the grouped tabular inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.encoders.base import EncoderModule, full_mask
from polyfuse.models.outputs import EncoderOutput


class NumericMLP(EncoderModule):
    """(B, N) standardised values + (B, N) given-mask -> MLP -> pooled (B, D); tokens = pooled as one token.

    The mask goes in beside the values so that a missing value (stored as 0.0) and a given 0.0 differ.
    """

    def __init__(
        self,
        num_features: int,  # N: numeric columns, in the order the data layer stacks them
        hidden_dim: int = 64,
        output_dim: int = 64,  # D
        dropout: float = 0.1,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.output_dim = output_dim
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_features, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )
        if not trainable:
            self.freeze()

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        values = batch.values  # (B, N)
        if values.dim() != 2 or values.shape[1] != self.num_features:
            raise ValueError(
                f"numeric.mlp: expected values (B, {self.num_features}), got {tuple(values.shape)}; "
                "num_features must equal the number of numeric columns"
            )
        given = (
            batch.token_mask if batch.token_mask is not None else torch.ones_like(values, dtype=torch.bool)
        )
        given_f = given.to(values.dtype)
        pooled = self.mlp(torch.cat([values * given_f, given_f], dim=1))  # (B, 2N) -> (B, D)
        mask = full_mask(values.shape[0], 1, values.device)
        return EncoderOutput(tokens=pooled[:, None], token_mask=mask, pooled=pooled)


class CategoryEmbedding(EncoderModule):
    """(B, K) category ids -> one embedding per column: tokens (B, K, D); pooled = Linear(concat) (B, D).

    Ids 0 (missing) and 1 (unknown) have embeddings of their own, learned like any other value, so every
    column always yields a real token.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],  # ids per column, counting the reserved 0 = missing and 1 = unknown
        output_dim: int = 32,  # D, also each column's embedding size
        trainable: bool = True,
    ) -> None:
        super().__init__()
        if not cardinalities or min(cardinalities) < 2:
            raise ValueError(
                f"category.embedding: cardinalities must list one size >= 2 per column (ids 0 = missing and "
                f"1 = unknown are reserved), got {list(cardinalities)}"
            )
        self.cardinalities = list(cardinalities)
        self.output_dim = output_dim
        self.embeddings = nn.ModuleList(nn.Embedding(n, output_dim) for n in self.cardinalities)
        self.project = nn.Linear(len(self.cardinalities) * output_dim, output_dim)
        if not trainable:
            self.freeze()

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        ids = batch.values  # (B, K)
        if ids.dim() != 2 or ids.shape[1] != len(self.embeddings):
            raise ValueError(
                f"category.embedding: expected ids (B, {len(self.embeddings)}), one per category column, "
                f"got {tuple(ids.shape)}"
            )
        tokens = torch.stack([emb(ids[:, k]) for k, emb in enumerate(self.embeddings)], dim=1)  # (B, K, D)
        pooled = self.project(tokens.flatten(1))  # (B, K*D) -> (B, D)
        mask = full_mask(ids.shape[0], ids.shape[1], ids.device)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=pooled)
