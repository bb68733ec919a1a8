"""What a DataLoader yields: per-input tensors with explicit presence masks, and the targets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ModalityBatch:
    """One input feature for a batch of B rows.

    values, by modality:
      image     float (B, C, H, W), normalised
      audio     float (B, F, T) log-mel or MFCC frames, zero-padded in time
      text      long  (B, T) token ids, padded with the tokenizer's pad id
      numeric   float (B, N) standardised, 0.0 where a value is missing
      category  long  (B, K) vocabulary ids, 0 = missing, 1 = unknown
    present:    bool (B,) False where the row lacks this input entirely (the values there are padding
                and carry no information; encoders and fusions must not depend on them).
    token_mask: bool (B, T) True on real tokens/frames (text, audio); for numeric, (B, N) True where the
                value was given; None for images and categories.
    """

    values: Tensor
    present: Tensor
    token_mask: Tensor | None = None

    def to(self, device: torch.device | str) -> ModalityBatch:
        mask = None if self.token_mask is None else self.token_mask.to(device)
        return ModalityBatch(self.values.to(device), self.present.to(device), mask)


@dataclass
class Batch:
    """inputs keyed by input name (a column name, or 'numeric' / 'category' for the grouped tabular
    columns); targets keyed by target column: long (B,) class ids, float (B,) regression values or
    float (B, L) multi-label indicators; row_index (B,) positions in the table the rows came from."""

    inputs: dict[str, ModalityBatch]
    targets: dict[str, Tensor] = field(default_factory=dict)
    row_index: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            {name: b.to(device) for name, b in self.inputs.items()},
            {name: t.to(device) for name, t in self.targets.items()},
            self.row_index.to(device),
        )

    def __len__(self) -> int:
        return int(self.row_index.shape[0])
