"""Typed values passed between encoders, fusions and heads."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EncoderOutput:
    """What every encoder returns for a batch of B rows.

    tokens:     (B, T, D) per-token / per-patch / per-frame features (T = 1 for pooled-only encoders)
    token_mask: (B, T) bool, True on real tokens
    pooled:     (B, D) one vector per row
    """

    tokens: Tensor
    token_mask: Tensor
    pooled: Tensor
