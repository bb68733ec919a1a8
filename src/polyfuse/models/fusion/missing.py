"""Missing inputs, shared by every fusion: a learned stand-in per input, and modality dropout.

A row that lacks an input (present[name][row] is False) carries garbage in features[name][row]: padding,
stale values, even NaN. Fusions never look at it. `MissingModalityEmbedding` swaps it for one learned
vector per input, always with `torch.where` (multiplying by a 0/1 mask would turn NaN * 0 into NaN), so
the absent slot cannot influence the output or its gradient. Token fusions see the same learned vector as
a single valid token at position 0.

`modality_dropout` hides inputs at random during training so that the model learns to predict from any
subset, which is what it meets at inference when a column is empty.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from polyfuse.models.outputs import EncoderOutput

# Attribute names that an nn.ModuleDict / nn.ParameterDict key may not take ("type", "keys", "training"...).
_RESERVED = frozenset(dir(nn.ModuleDict()) + dir(nn.ParameterDict()))


def module_key(name: str) -> str:
    """Key under which an input's submodules and parameters are stored (nn.ModuleDict/ParameterDict).

    Input names are column names, so they may hold '.' (not allowed in a module key) or shadow a module
    attribute ('type', 'values'). Plain names map to themselves; '%' and '.' are escaped, and a reserved or
    empty name gets a '%' prefix, which escaping alone never produces, so the mapping is one-to-one.
    """
    key = name.replace("%", "%25").replace(".", "%2E")
    if not key or key in _RESERVED:
        key = "%" + key
    return key


def check_config(
    fusion: str, input_dims: dict[str, int], output_dim: int, modality_dropout: float
) -> dict[str, int]:
    """Validate the arguments every fusion shares; returns input_dims sorted by name."""
    if not input_dims:
        raise ValueError(f"{fusion} fusion needs at least one input, got input_dims={{}}")
    bad = {n: d for n, d in input_dims.items() if d < 1}
    if bad or output_dim < 1:
        raise ValueError(
            f"{fusion} fusion: dims must be >= 1, got input_dims={input_dims}, output_dim={output_dim}"
        )
    if not 0.0 <= modality_dropout <= 1.0:
        raise ValueError(f"{fusion} fusion: modality_dropout must be in [0, 1], got {modality_dropout}")
    return dict(sorted(input_dims.items()))


def check_inputs(
    input_dims: dict[str, int], features: dict[str, EncoderOutput], present: dict[str, Tensor]
) -> int:
    """Validate one forward call against the fusion's inputs; returns the batch size B."""
    expected = sorted(input_dims)
    if sorted(features) != expected or sorted(present) != expected:
        raise ValueError(
            f"fusion inputs are {expected}, got features for {sorted(features)} and presence for "
            f"{sorted(present)}. Pass every input the fusion was built with; mark absent rows with "
            "present[name] = False rather than leaving the input out"
        )
    batch = present[expected[0]].shape[0]
    for name in expected:
        f, p = features[name], present[name]
        if p.dtype != torch.bool or p.shape != (batch,):
            raise ValueError(
                f"present['{name}'] must be bool of shape ({batch},), got {p.dtype} {tuple(p.shape)}"
            )
        b, t, d = f.tokens.shape
        if f.pooled.shape != (batch, input_dims[name]) or (b, d) != (batch, input_dims[name]):
            raise ValueError(
                f"input '{name}': expected pooled ({batch}, {input_dims[name]}) and tokens ({batch}, T, "
                f"{input_dims[name]}), got pooled {tuple(f.pooled.shape)} and tokens {tuple(f.tokens.shape)}"
            )
        if f.token_mask.shape != (batch, t) or f.token_mask.dtype != torch.bool or t == 0:
            raise ValueError(
                f"input '{name}': token_mask must be bool ({batch}, {t}) with T >= 1, got "
                f"{f.token_mask.dtype} {tuple(f.token_mask.shape)}"
            )
    return batch


class FilledTokens(NamedTuple):
    tokens: Tensor  # (B, T, D), zero at every invalid position
    mask: Tensor  # (B, T) bool, True on valid tokens; every row has at least one


class MissingModalityEmbedding(nn.Module):
    """One learned vector per input that stands in for it in rows that lack it."""

    def __init__(self, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        # small init: a stand-in starts near "no information" and learns what absence predicts
        self.vectors = nn.ParameterDict(
            {module_key(n): nn.Parameter(torch.randn(input_dims[n]) * 0.02) for n in self.names}
        )

    def vector(self, name: str) -> Tensor:
        vector: Tensor = self.vectors[module_key(name)]  # (D,)
        return vector

    def fill_pooled(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Pooled vectors (B, D_m) per input, with the learned vector in absent rows."""
        return {
            n: torch.where(present[n][:, None], features[n].pooled, self.vector(n).to(features[n].pooled))
            for n in self.names
        }

    def fill_tokens(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> dict[str, FilledTokens]:
        """Tokens (B, T_m, D_m) and mask (B, T_m) per input.

        Absent rows become the learned vector at position 0 (mask True only there). A present row with no
        valid token is treated the same way, so that attention never meets a row without keys. Invalid
        positions are set to zero, so garbage in padding (NaN included) cannot leak through attention
        weights of 0 (0 * NaN = NaN).
        """
        filled: dict[str, FilledTokens] = {}
        for n in self.names:
            tokens, mask = features[n].tokens, features[n].token_mask  # (B, T, D), (B, T)
            real = present[n] & mask.any(dim=1)  # (B,) rows whose own tokens are used
            first = torch.zeros_like(mask)
            first[:, 0] = True  # (B, T) the stand-in's single slot
            mask = torch.where(real[:, None], mask, first)  # (B, T)
            stand_in = torch.where(first[..., None], self.vector(n).to(tokens), 0.0)  # (B, T, D)
            tokens = torch.where(real[:, None, None], tokens, stand_in)
            tokens = torch.where(mask[..., None], tokens, 0.0)
            filled[n] = FilledTokens(tokens, mask)
        return filled


def modality_dropout(
    present: dict[str, Tensor], p: float, generator: torch.Generator | None = None, *, training: bool
) -> dict[str, Tensor]:
    """Hide each present input with probability p per row, during training only.

    A row never loses all its inputs: if every present input of a row was dropped, one of them, chosen
    uniformly at random, is kept. Rows that had no input to begin with stay empty. Returns new masks; the
    argument is not modified.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"modality dropout p must be in [0, 1], got {p}")
    if not training or p == 0.0 or not present:
        return dict(present)
    names = sorted(present)
    mask = torch.stack([present[n] for n in names], dim=1)  # (B, M) bool
    draw = torch.rand(mask.shape, generator=generator, device=mask.device)  # (B, M)
    kept = mask & (draw >= p)  # p = 1.0 drops everything here
    # rows left empty keep one of their present inputs: argmax of fresh noise over the present ones
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    choice = torch.where(mask, noise, -1.0).argmax(dim=1)  # (B,)
    rescue = nn.functional.one_hot(choice, len(names)).bool() & mask  # (B, M)
    empty = ~kept.any(dim=1, keepdim=True)  # (B, 1)
    kept = torch.where(empty, rescue, kept)
    return {n: kept[:, i] for i, n in enumerate(names)}
