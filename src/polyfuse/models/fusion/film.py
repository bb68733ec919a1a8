"""FiLM fusion (Perez et al. 2018): each input's tokens, modulated by what the other inputs say.

For a question about a picture the answer depends on both together: the question decides which visual
features matter. FiLM lets one input scale and shift the other's features channel by channel, per row.
Here every input is modulated by all the others (no input has to be named the "question"):

    x_m   = Linear_m(tokens_m)                                        (B, T_m, d_model)
    c_m   = Linear(concat of the other inputs' pooled vectors)        (B, d_model)
    for each block l:
        γ, β = FiLM_l(c_m)                                            (B, d_model) each; γ starts at 1
        x_m  = x_m + Dropout(ReLU(γ ⊙ LN(Linear_l(x_m)) + β))       (B, T_m, d_model)
    p_m   = masked mean and max of x_m over m's valid tokens          (B, 2 * d_model)
    out   = Linear(concat_m [p_m, c_m])                               (B, output_dim)

Absent inputs are the learned stand-in (a single token, and the pooled vector in others' contexts). With
a single input there is nothing to condition on: its context is a learned constant.
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


class FiLMBlock(nn.Module):
    """Residual block whose normalised hidden features are scaled and shifted by a conditioning vector."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)  # FiLM supplies the affine part
        self.film = nn.Linear(d_model, 2 * d_model)
        nn.init.zeros_(self.film.weight)  # start as identity modulation (γ = 1, β = 0): a plain block
        nn.init.zeros_(self.film.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        delta_gamma, beta = self.film(condition)[:, None, :].chunk(2, dim=-1)  # (B, 1, d) each
        h = (1.0 + delta_gamma) * self.norm(self.linear(x)) + beta  # (B, T, d)
        out: Tensor = x + self.dropout(torch.relu(h))
        return out


class FiLMFusion(nn.Module):
    """d_model: width of the modulated tokens and of each context; blocks: FiLM blocks per input;
    dropout: on the blocks' residual branches and before the output layer."""

    trains_in_bf16: ClassVar[bool] = True  # AV-Digits-N, bench/results/fusion_noisy_bf16.md

    def __init__(
        self,
        input_dims: dict[str, int],
        output_dim: int,
        *,
        d_model: int = 128,
        blocks: int = 2,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dims = check_config("film", input_dims, output_dim, modality_dropout)
        if d_model < 1 or blocks < 1:
            raise ValueError(f"film fusion: d_model and blocks must be >= 1, got {d_model} and {blocks}")
        self.output_dim = output_dim
        self.modality_dropout = modality_dropout
        self.missing = MissingModalityEmbedding(self.input_dims)
        names = list(self.input_dims)
        self.proj = nn.ModuleDict({module_key(n): nn.Linear(d, d_model) for n, d in self.input_dims.items()})
        self.context = nn.ModuleDict(
            {
                module_key(n): nn.Linear(sum(self.input_dims[o] for o in names if o != n) or 1, d_model)
                for n in names
            }
        )
        self.blocks = nn.ModuleDict(
            {module_key(n): nn.ModuleList(FiLMBlock(d_model, dropout) for _ in range(blocks)) for n in names}
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(len(names) * 3 * d_model, output_dim)

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        batch = check_inputs(self.input_dims, features, present)
        present = modality_dropout(present, self.modality_dropout, training=self.training)
        filled = self.missing.fill_tokens(features, present)  # name -> (B, T_m, D_m), (B, T_m)
        pooled = self.missing.fill_pooled(features, present)  # name -> (B, D_m)
        names = list(self.input_dims)
        parts = []
        for n in names:
            key = module_key(n)
            others = [pooled[o] for o in names if o != n]
            # (B, sum D_o); a lone input is conditioned on a constant, which its bias turns into a learned one
            context_in = torch.cat(others, dim=-1) if others else pooled[n].new_ones(batch, 1)
            condition = self.context[key](context_in)  # (B, d_model)
            x = self.proj[key](filled[n].tokens)  # (B, T_n, d_model)
            blocks: nn.ModuleList = self.blocks[key]  # type: ignore[assignment]
            for block in blocks:
                x = block(x, condition)
            mask = filled[n].mask[..., None]  # (B, T_n, 1), at least one True per row
            mean = torch.where(mask, x, 0.0).sum(dim=1) / mask.sum(dim=1)  # (B, d_model)
            peak = torch.where(mask, x, torch.finfo(x.dtype).min).amax(dim=1)  # (B, d_model)
            parts += [mean, peak, condition]
        out: Tensor = self.head(self.dropout(torch.cat(parts, dim=-1)))  # (B, output_dim)
        return out
