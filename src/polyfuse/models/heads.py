"""Task heads: the fused vector (B, D) → logits or values for one target."""

from __future__ import annotations

from torch import Tensor, nn

from polyfuse.data.preprocess import TargetSpec


def head_outputs(spec: TargetSpec) -> int:
    """Output units: classes (multi-class / multi-label) or 1 (regression)."""
    return 1 if spec.task == "regression" else len(spec.classes)


class TaskHead(nn.Module):
    """Linear, or one hidden layer when hidden_dim > 0. Returns (B, C) logits, (B, L) multi-label logits or
    (B,) standardised regression values."""

    def __init__(self, input_dim: int, spec: TargetSpec, hidden_dim: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        self.regression = spec.task == "regression"
        out = head_outputs(spec)
        if hidden_dim > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(input_dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, out),
            )
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, out))

    def forward(self, fused: Tensor) -> Tensor:
        out: Tensor = self.net(fused)
        return out.squeeze(-1) if self.regression else out
