"""Fusions: one tensor (B, output_dim) from a dict of encoder outputs keyed by input name.

    fusion = create_fusion("gated", {"image": 512, "text": 384}, output_dim=256)
    fused = fusion(features, present)  # features[name]: EncoderOutput, present[name]: bool (B,)

Every fusion takes any number (>= 1) of inputs, keeps its per-input modules in dicts keyed by input name
(sorted), replaces absent inputs with a learned stand-in (see `missing.py`), and accepts
`modality_dropout` (probability of hiding each present input per row while training).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from polyfuse.models.fusion.concat import ConcatFusion
from polyfuse.models.fusion.cross_attention import CrossAttentionFusion
from polyfuse.models.fusion.film import FiLMFusion
from polyfuse.models.fusion.gated import GatedFusion
from polyfuse.models.fusion.lowrank import LowRankFusion
from polyfuse.models.fusion.missing import MissingModalityEmbedding, modality_dropout
from polyfuse.models.fusion.tensor import TensorFusion
from polyfuse.models.fusion.transformer import TransformerFusion
from polyfuse.models.outputs import EncoderOutput


class Fusion(Protocol):
    """What every fusion is: an nn.Module with this forward.

    features[name]: the encoder output of input `name`; present[name]: bool (B,), False where the row
    lacks that input. Values of absent rows are garbage and do not influence the output. Returns
    (B, output_dim). `trains_in_bf16`: True once the fusion's results were checked under bf16 autocast
    (`training.precision: auto` may then train it in bf16; see polyfuse.training.precision).
    """

    output_dim: int
    training: bool
    trains_in_bf16: ClassVar[bool]

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor: ...

    def __call__(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...


# name -> constructor(input_dims, output_dim, **options); one line per fusion
FUSIONS: dict[str, Callable[..., Fusion]] = {
    "concat": ConcatFusion,
    "cross_attention": CrossAttentionFusion,
    "film": FiLMFusion,
    "gated": GatedFusion,
    "lowrank": LowRankFusion,
    "tensor": TensorFusion,
    "transformer": TransformerFusion,
}


def list_fusions(pattern: str = "*") -> list[str]:
    """Registered fusion names matching a shell-style pattern, sorted."""
    return sorted(name for name in FUSIONS if fnmatch(name, pattern))


def create_fusion(name: str, input_dims: dict[str, int], output_dim: int, **kwargs: Any) -> Fusion:
    """Build the fusion `name` over inputs {input name: feature dim}, giving (B, output_dim)."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choices: {', '.join(list_fusions())}")
    constructor = FUSIONS[name]
    try:
        inspect.signature(constructor).bind(input_dims, output_dim, **kwargs)
    except TypeError as e:
        options = [
            p for p in inspect.signature(constructor).parameters if p not in ("input_dims", "output_dim")
        ]
        raise ValueError(f"fusion {name!r}: {e}; its options are: {', '.join(options)}") from e
    return constructor(input_dims, output_dim, **kwargs)


__all__ = [
    "ConcatFusion",
    "CrossAttentionFusion",
    "FiLMFusion",
    "Fusion",
    "GatedFusion",
    "LowRankFusion",
    "MissingModalityEmbedding",
    "TensorFusion",
    "TransformerFusion",
    "create_fusion",
    "list_fusions",
    "modality_dropout",
]
