"""Joint transformer: one encoder over a CLS token and every input's tokens, read out at CLS.

    x = [CLS; Linear_1(tokens_1) + e_1; ...; Linear_M(tokens_M) + e_M]     (B, 1 + sum T_m, d_model)
    out = Linear(TransformerEncoder(x, padding mask)[:, 0])                 (B, output_dim)

e_m is a learned per-input embedding (which input a token came from); no positional embedding is added,
since encoders' tokens already carry their positions. Absent inputs are one learned stand-in token.

Cost: all tokens are kept, so attention costs (1 + sum T_m) ** 2 per head and layer; e.g. 512 text
tokens plus 1,000 audio frames is ~2.3M scores per head. That is the price of full token-level
interaction; for long inputs, pool in the encoder (fewer tokens) or use "cross_attention" / a pooled
fusion. Tokens are not truncated or pooled here, so nothing is silently dropped.
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


class TransformerFusion(nn.Module):
    """d_model, num_heads, num_layers: the joint encoder's size; ffn_dim: its feed-forward width (default
    2 * d_model); dropout: inside the encoder layers."""

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits-N, bench/results/fusion_noisy_bf16.md

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        *,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dims = check_config("transformer", input_dims, output_dim, modality_dropout)
        if d_model % num_heads:
            raise ValueError(
                f"transformer fusion: d_model={d_model} is not divisible by num_heads={num_heads}"
            )
        self.output_dim = output_dim
        self.modality_dropout = modality_dropout
        self.missing = MissingModalityEmbedding(self.input_dims)
        self.proj = nn.ModuleDict({module_key(n): nn.Linear(d, d_model) for n, d in self.input_dims.items()})
        self.modality_embed = nn.ParameterDict(
            {module_key(n): nn.Parameter(torch.randn(d_model) * 0.02) for n in self.input_dims}
        )
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            num_heads,
            ffn_dim or 2 * d_model,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # pre-norm layers leave the last residual stream unnormalised, hence the final LayerNorm
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, output_dim)

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        batch = check_inputs(self.input_dims, features, present)
        present = modality_dropout(present, self.modality_dropout, training=self.training)
        filled = self.missing.fill_tokens(features, present)  # name -> (B, T_m, D_m), (B, T_m)
        tokens = [self.cls.expand(batch, 1, -1)]  # (B, 1, d_model)
        valid = [torch.ones(batch, 1, dtype=torch.bool, device=self.cls.device)]  # CLS: never all-masked
        for n in self.input_dims:
            key = module_key(n)
            tokens.append(self.proj[key](filled[n].tokens) + self.modality_embed[key])  # (B, T_m, d_model)
            valid.append(filled[n].mask)  # (B, T_m)
        x = torch.cat(tokens, dim=1)  # (B, 1 + sum T_m, d_model)
        h: Tensor = self.encoder(x, src_key_padding_mask=~torch.cat(valid, dim=1))
        out: Tensor = self.head(h[:, 0])  # (B, output_dim)
        return out
