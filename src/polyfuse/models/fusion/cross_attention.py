"""Cross-modal attention: each input's tokens attend to the tokens of all the other inputs.

For every input m (MulT-style, one block per input, keyed by name):

    x_m  = Linear_m(tokens_m)                                   (B, T_m, d_model)
    ctx  = concat of x_j over the other inputs j != m           (B, sum T_j, d_model)
    h_m  = LN(x_m + CrossAttn(q=x_m, kv=ctx));  h_m = LN(h_m + FFN(h_m))
    p_m  = masked mean of h_m over m's valid tokens             (B, d_model)
    out  = Linear(concat_m p_m)                                 (B, output_dim)

Absent inputs are the learned stand-in token (one valid key, or one query); invalid tokens are masked out
of keys and of the mean. With a single input, it attends to itself. The cost of input m's block is
T_m * sum_j T_j per head; long inputs are better pooled by their encoder first.
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


class CrossAttentionBlock(nn.Module):
    """Post-norm cross-attention block: queries from x, keys/values from a masked context."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d_model)
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        b, tq, d = x.shape
        tk, h = context.shape[1], self.num_heads
        q = self.q(x).view(b, tq, h, d // h).transpose(1, 2)  # (B, H, Tq, Dh)
        k, v = self.kv(context).view(b, tk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, Tk, Dh)
        # additive mask with a large finite negative rather than -inf: a row without any valid key (which
        # fill_tokens already rules out) gets a uniform average of zeroed tokens instead of NaN
        bias = torch.zeros(context_mask.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~context_mask, torch.finfo(q.dtype).min)[:, None, None, :]  # (B, 1, 1, Tk)
        p = self.attn_dropout if self.training else 0.0
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, Tq, Dh)
        a = a.transpose(1, 2).reshape(b, tq, d)  # (B, Tq, D)
        x = self.norm1(x + self.dropout(self.out(a)))
        out: Tensor = self.norm2(x + self.dropout(self.ffn(x)))  # (B, Tq, D)
        return out


class CrossAttentionFusion(nn.Module):
    """d_model, num_heads: width and heads of every block (one block per input); ffn_dim: the blocks'
    feed-forward width (default 2 * d_model); dropout: on attention weights and residual branches."""

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits-N, bench/results/fusion_noisy_bf16.md

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        *,
        d_model: int = 128,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dims = check_config("cross_attention", input_dims, output_dim, modality_dropout)
        if d_model % num_heads:
            raise ValueError(
                f"cross_attention fusion: d_model={d_model} is not divisible by num_heads={num_heads}"
            )
        self.output_dim = output_dim
        self.modality_dropout = modality_dropout
        self.missing = MissingModalityEmbedding(self.input_dims)
        self.proj = nn.ModuleDict({module_key(n): nn.Linear(d, d_model) for n, d in self.input_dims.items()})
        self.blocks = nn.ModuleDict(
            {
                module_key(n): CrossAttentionBlock(d_model, num_heads, ffn_dim or 2 * d_model, dropout)
                for n in self.input_dims
            }
        )
        self.head = nn.Linear(len(self.input_dims) * d_model, output_dim)

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        check_inputs(self.input_dims, features, present)
        present = modality_dropout(present, self.modality_dropout, training=self.training)
        filled = self.missing.fill_tokens(features, present)  # name -> (B, T_m, D_m), (B, T_m)
        names = list(self.input_dims)
        x = {n: self.proj[module_key(n)](filled[n].tokens) for n in names}  # name -> (B, T_m, d_model)
        pooled = []
        for n in names:
            others = [o for o in names if o != n] or [n]
            context = torch.cat([x[o] for o in others], dim=1)  # (B, sum T_o, d_model)
            context_mask = torch.cat([filled[o].mask for o in others], dim=1)  # (B, sum T_o)
            h = self.blocks[module_key(n)](x[n], context, context_mask)  # (B, T_n, d_model)
            mask = filled[n].mask[..., None]  # (B, T_n, 1), at least one True per row
            pooled.append(torch.where(mask, h, 0.0).sum(dim=1) / mask.sum(dim=1).clamp(min=1))  # (B, d_model)
        out: Tensor = self.head(torch.cat(pooled, dim=-1))  # (B, output_dim)
        return out
