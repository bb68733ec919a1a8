"""Parameter-efficient fine-tuning of pretrained encoders: a few trained parameters, the backbone fixed.

    encoders:
      text:
        name: text.minilm
        adapter: {method: lora, rank: 8}          # or ia3, bitfit, norm, bottleneck

Methods (`AdapterConfig.method`):
  lora        low-rank updates W + (alpha / r) B A on the family's attention projections (peft's LoRA)
  ia3         learned rescaling of keys, values and feed-forward activations (peft's IA3)
  bitfit      only the backbone's biases train (Ben Zaken et al. 2022)
  norm        only its normalisation layers' scales and shifts train
  bottleneck  the backbone stays frozen; a small residual bottleneck (LayerNorm -> down -> GELU -> up,
              zero-initialised up, so it starts as the identity) between its output and the fusion
              trains: the "cross-modal adapter" (Houlsby et al. 2019). Built by the model, not here.

LoRA and IA3 go through the `peft` library (`pip install polyfuse[peft]`) on the Hugging Face backbone
inside an `hf` encoder, with target modules chosen per model family (`DEFAULT_TARGETS`, overridable with
`target_modules`). Saving: by default (`merge: true`) the adapter is merged into the base weights, so the
model directory holds a plain backbone any loader and exporter can read; with `merge: false` it holds the
untouched base in backbones/<input>/ and the adapter in backbones/<input>/adapter/, loaded back with
peft, offline.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from polyfuse.config import AdapterConfig
from polyfuse.models.outputs import EncoderOutput

PEFT_METHODS = ("lora", "ia3")

# model_type -> (LoRA targets, IA3's feed-forward targets): the attention's query and value projections
# (Hu et al. 2021) for transformers, whose names differ by family and by transformers version (BERT's
# query / value; ViT, Swin, AST in transformers >= 5, CLIP, wav2vec2, Whisper: q_proj / v_proj; a name
# that matches nothing is skipped), the pointwise convolutions of ConvNeXt, ResNet's convolutions. IA3
# rescales keys, values and the input of the second feed-forward layer (Liu et al. 2022).
_ATTENTION = ["query", "value", "q_proj", "v_proj"]
_FEEDFORWARD = ["output.dense", "fc2", "output_dense"]
DEFAULT_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    **{
        model_type: (_ATTENTION, _FEEDFORWARD)
        for model_type in (
            "bert",
            "roberta",
            "xlm-roberta",
            "vit",
            "deit",
            "swin",
            "audio-spectrogram-transformer",
            "clip_vision_model",
            "clip",
            "wav2vec2",
            "hubert",
            "wavlm",
            "data2vec-audio",
            "whisper",
        )
    },
    "convnext": (["pwconv1", "pwconv2"], ["pwconv2"]),
    "resnet": (["convolution"], ["convolution"]),
}
IA3_KEYS = {"query": "key", "q_proj": "k_proj"}  # IA3 rescales keys and values, not queries


def _targets(model_type: str, cfg: AdapterConfig) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) for peft."""
    if cfg.target_modules:
        return list(cfg.target_modules), []
    if model_type not in DEFAULT_TARGETS:
        raise ValueError(
            f"adapter {cfg.method}: no default target modules for model type '{model_type}'; set "
            f"adapter.target_modules (names of its Linear layers, e.g. ['query', 'value']); "
            f"known types: {', '.join(sorted(DEFAULT_TARGETS))}"
        )
    lora, feedforward = DEFAULT_TARGETS[model_type]
    if cfg.method == "lora":
        return lora, []
    keys = [IA3_KEYS.get(t, t) for t in lora]
    return sorted({*keys, *lora, *feedforward} - set(IA3_KEYS)), feedforward


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA / IA3 adapters need the peft library: pip install 'polyfuse[peft]'") from None
    return peft


def apply_adapter(encoder: nn.Module, cfg: AdapterConfig) -> None:
    """Make `encoder` parameter-efficient in place (all methods but bottleneck, which the model adds)."""
    if cfg.method == "bottleneck":
        encoder.freeze()  # type: ignore[operator]
        return
    if cfg.method in ("bitfit", "norm"):
        for _, module in encoder.named_modules():
            for param_name, p in module.named_parameters(recurse=False):
                if cfg.method == "bitfit":
                    p.requires_grad_(param_name == "bias")
                else:
                    p.requires_grad_(_is_norm(module))
        return
    backbone = getattr(encoder, "model", None)
    if backbone is None or not hasattr(encoder, "name_or_path"):
        raise ValueError(
            f"adapter {cfg.method} adapts a Hugging Face backbone (text.hf, text.minilm, image.hf, audio.hf); "
            f"{type(encoder).__name__} has none: use bitfit, norm or bottleneck"
        )
    peft = _peft()
    if cfg.path is not None:  # a saved adapter: base + adapter from the model directory
        encoder.model = peft.PeftModel.from_pretrained(backbone, cfg.path, is_trainable=True)
        return
    model_type = str(backbone.config.model_type)
    targets, feedforward = _targets(model_type, cfg)
    if cfg.method == "lora":
        peft_config = peft.LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets
        )
    else:
        peft_config = peft.IA3Config(target_modules=targets, feedforward_modules=feedforward)
    encoder.model = peft.get_peft_model(backbone, peft_config)


def _is_norm(module: nn.Module) -> bool:
    norms = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return isinstance(module, norms) or type(module).__name__.lower().endswith(("layernorm", "norm"))


def is_peft_model(module: nn.Module) -> bool:
    return type(module).__name__.startswith("Peft") and hasattr(module, "merge_and_unload")


def save_backbone(encoder: nn.Module, directory: Path, merge: bool) -> bool:
    """Write an hf encoder's backbone for the artifact: merged into plain weights, or the base beside
    an adapter/ folder. Returns True when an adapter folder was written. The live model is not changed."""
    from polyfuse.models.encoders.hf import quiet_transformers

    model: Any = encoder.model
    with quiet_transformers():
        if not is_peft_model(model):
            model.save_pretrained(directory)
            return False
        if merge:
            copy.deepcopy(model).merge_and_unload().save_pretrained(directory)
            return False
        copy.deepcopy(model).unload().save_pretrained(directory)  # the base weights, unchanged
        model.save_pretrained(str(directory / "adapter"))
        return True


class BottleneckAdapter(nn.Module):
    """Residual bottleneck on a frozen encoder's output: x + up(GELU(down(LayerNorm(x)))), applied to the
    tokens (B, T, D) and the pooled vector (B, D) alike. `up` starts at zero: training starts from the
    frozen encoder's own features."""

    def __init__(self, dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck_dim)
        self.up = nn.Linear(bottleneck_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def adapt(self, x: Tensor) -> Tensor:
        adapted: Tensor = x + self.up(nn.functional.gelu(self.down(self.norm(x))))
        return adapted

    def forward(self, output: EncoderOutput) -> EncoderOutput:
        return EncoderOutput(
            tokens=self.adapt(output.tokens), token_mask=output.token_mask, pooled=self.adapt(output.pooled)
        )


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


__all__ = [
    "DEFAULT_TARGETS",
    "AdapterConfig",
    "BottleneckAdapter",
    "apply_adapter",
    "save_backbone",
    "trainable_share",
]
