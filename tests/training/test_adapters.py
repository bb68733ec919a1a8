"""Parameter-efficient fine-tuning: LoRA / IA3 (through peft) on every Hugging Face family, BitFit, norm-only
and bottleneck adapters; artifacts saved merged or as base + adapter, both loadable offline from a relative
path; layer-wise learning-rate decay, separate encoder learning rates, gradual unfreezing, gradient
checkpointing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tiny_hf
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import polyfuse
from polyfuse.cli import app
from polyfuse.config import AdapterConfig, EncoderConfig, TrainingConfig
from polyfuse.data.batch import ModalityBatch
from polyfuse.models.adapters import apply_adapter, save_backbone
from polyfuse.models.encoders import create_encoder
from polyfuse.training.module import PolyfuseModule, learning_rate_scales

ENCODER = {
    **{f: "text.hf" for f in tiny_hf.TEXT_FAMILIES},
    **{f: "image.hf" for f in tiny_hf.IMAGE_FAMILIES},
    **{f: "audio.hf" for f in tiny_hf.AUDIO_FAMILIES},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    return tiny_hf.build_all(tmp_path_factory.mktemp("backbones"))


def batch_for(family: str) -> ModalityBatch:
    """Two rows in the layout the data layer collates for `family` (see data/modalities/pretrained.py)."""
    if family in tiny_hf.TEXT_FAMILIES:
        values, mask = torch.randint(5, 40, (2, 9)), torch.ones(2, 9, dtype=torch.bool)
    elif family in tiny_hf.IMAGE_FAMILIES:
        values, mask = torch.randn(2, 3, 32, 32), None
    elif family == "whisper":
        values, mask = torch.randn(2, 80, 100), torch.ones(2, 100, dtype=torch.bool)
    elif family == "ast":
        values, mask = torch.randn(2, 16, 32), torch.ones(2, 32, dtype=torch.bool)
    else:
        values, mask = torch.randn(2, 1, 3200), torch.ones(2, 3200, dtype=torch.bool)
    return ModalityBatch(values, torch.ones(2, dtype=torch.bool), mask)


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", list(ENCODER))
def test_peft_adapts_every_family_trains_few_parameters_and_saves_both_ways(
    family: str, method: str, backbones: dict[str, Path], tmp_path: Path
) -> None:
    encoder = create_encoder(ENCODER[family], name_or_path=str(backbones[family]))
    total = sum(p.numel() for p in encoder.parameters())
    apply_adapter(encoder, AdapterConfig(method=method, rank=2))
    trained = {n: p for n, p in encoder.named_parameters() if p.requires_grad}
    assert trained, "the family's default target modules matched nothing"
    assert all(("lora_" in n) or ("ia3_" in n) for n in trained)
    assert sum(p.numel() for p in trained.values()) < 0.2 * total  # tiny models: a generous bound

    batch = batch_for(family)
    encoder.train()
    encoder(batch).pooled.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.values())
    with torch.no_grad():  # move the adapter away from its identity start so merging matters
        for p in trained.values():
            p.add_(0.05 * torch.randn_like(p))
    encoder.eval()
    with torch.no_grad():
        expected = encoder(batch).pooled

    assert not save_backbone(encoder, tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged" / "adapter").exists()
    merged = create_encoder(ENCODER[family], name_or_path=str(tmp_path / "merged")).eval()
    assert save_backbone(encoder, tmp_path / "split", merge=False)
    split = create_encoder(ENCODER[family], name_or_path=str(tmp_path / "split"))
    apply_adapter(split, AdapterConfig(method=method, path=str(tmp_path / "split" / "adapter")))
    split.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(batch).pooled, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(split(batch).pooled, expected, rtol=1e-4, atol=1e-5)


def test_bitfit_and_norm_only_train_biases_and_norms(backbones: dict[str, Path]) -> None:
    bitfit = create_encoder("text.hf", name_or_path=str(backbones["bert"]))
    apply_adapter(bitfit, AdapterConfig(method="bitfit"))
    names = [n for n, p in bitfit.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(".bias") for n in names)
    norm = create_encoder("text.hf", name_or_path=str(backbones["bert"]))
    apply_adapter(norm, AdapterConfig(method="norm"))
    names = [n for n, p in norm.named_parameters() if p.requires_grad]
    assert names and all("LayerNorm" in n for n in names)


def test_unknown_family_without_target_modules_names_the_fix(backbones: dict[str, Path]) -> None:
    encoder = create_encoder("image.hf", name_or_path=str(backbones["vit"]))
    encoder.model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="adapter.target_modules"):
        apply_adapter(encoder, AdapterConfig(method="lora"))


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(backbones: dict[str, Path]) -> None:
    batch = batch_for("bert")
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = create_encoder(
            "text.hf", name_or_path=str(backbones["bert"]), gradient_checkpointing=checkpointing
        )
        encoder.train()  # HF checkpoints only in training mode; no dropout, so the two runs must match
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        assert encoder.model.is_gradient_checkpointing == checkpointing
        out = encoder(batch).pooled
        out.square().sum().backward()
        grad = next(
            p.grad for n, p in encoder.named_parameters() if "layer.0.attention.self.query.weight" in n
        )
        results.append((out.detach(), grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


# ---- end to end: a table on disk -> polyfuse train -> model dir -> polyfuse.load (relative path)


@pytest.fixture(scope="module")
def text_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    rows = [
        {
            "text": f"the item was {'great' if i % 2 else 'poor'} and {tiny_hf.WORDS[i % 12]}",
            "price": i % 5,
            "label": ["low", "high"][i % 2],
        }
        for i in range(24)
    ]
    pd.DataFrame(rows).to_csv(root / "reviews.csv", index=False)
    return root / "reviews.csv"


def train_cli(table: Path, folder: Path, encoder: EncoderConfig, small_config: Any, **training: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = small_config(table, folder / "config.yaml", epochs=1)
    config = config.model_copy(
        update={
            "encoders": {**config.encoders, "text": encoder},
            "data": config.data.model_copy(update={"use_cache": False}),
            "training": config.training.model_copy(update={"batch_size": 8, **training}),
        }
    )
    (folder / "config.yaml").write_text(config.to_yaml())
    result = CliRunner().invoke(
        app, ["train", str(folder / "config.yaml"), "--output", str(folder / "runs" / "x")]
    )
    assert result.exit_code == 0, result.output
    return folder / "runs" / "x" / "model"


@pytest.mark.slow
@pytest.mark.parametrize(
    "adapter",
    [
        {"method": "lora", "rank": 4},
        {"method": "lora", "rank": 4, "merge": False},
        {"method": "ia3", "merge": False},
        {"method": "bitfit"},
        {"method": "bottleneck", "bottleneck_dim": 8},
    ],
    ids=["lora-merged", "lora-adapter", "ia3-adapter", "bitfit", "bottleneck"],
)
def test_adapted_text_model_trains_saves_and_loads_from_a_relative_path(
    adapter: dict[str, Any],
    backbones: dict[str, Path],
    text_table: Path,
    small_config: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoder = EncoderConfig(
        name="text.hf", options={"name_or_path": str(backbones["bert"])}, adapter=AdapterConfig(**adapter)
    )
    model_dir = train_cli(text_table, tmp_path, encoder, small_config)
    metrics = json.loads((model_dir / "metrics.json").read_text())["training"]
    assert metrics["trainable_parameters"] < metrics["parameters"]
    unmerged = adapter["method"] in ("lora", "ia3") and adapter.get("merge") is False
    assert (model_dir / "backbones" / "text" / "adapter" / "adapter_config.json").exists() == unmerged
    if adapter["method"] == "lora" and not unmerged:  # merged: a plain backbone any loader reads
        names = load_file(str(model_dir / "backbones" / "text" / "model.safetensors")).keys()
        assert not any("lora" in n for n in names)
    if adapter["method"] == "bottleneck":
        assert any(k.startswith("adapters.text.") for k in load_file(str(model_dir / "model.safetensors")))

    rows = pd.read_csv(text_table)
    before = polyfuse.load(model_dir).predict_proba(rows, base_dir=text_table.parent)
    monkeypatch.chdir(tmp_path)
    after = polyfuse.load("runs/x/model").predict_proba(rows, base_dir=text_table.parent)
    np.testing.assert_allclose(before.to_numpy(), after.to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gradual_unfreezing_keeps_the_backbone_fixed_until_its_epoch(
    backbones: dict[str, Path], text_table: Path, small_config: Any, tmp_path: Path
) -> None:
    encoder = EncoderConfig(name="text.hf", options={"name_or_path": str(backbones["bert"])})
    original = load_file(str(backbones["bert"] / "model.safetensors"))
    changed = []
    for epochs in (1, 2):
        model_dir = train_cli(
            text_table, tmp_path / str(epochs), encoder, small_config, epochs=epochs, unfreeze_after_epochs=1
        )
        saved = load_file(str(model_dir / "backbones" / "text" / "model.safetensors"))
        key = "encoder.layer.0.attention.self.query.weight"
        changed.append(not torch.equal(saved[key], original[key]))
    assert changed == [False, True]


def test_layer_decay_and_encoder_learning_rates_shape_the_optimizer(backbones: dict[str, Path]) -> None:
    from polyfuse.models.model import MultimodalModel

    encoder = create_encoder("text.hf", name_or_path=str(backbones["bert"]))
    apply_adapter(encoder, AdapterConfig(method="lora", rank=2))
    for p in encoder.parameters():  # full fine-tuning with LoRA on top, to see every group
        p.requires_grad_(True)
    head = torch.nn.Linear(32, 2)
    model = MultimodalModel({"text": encoder}, None, {"head": head})
    scales = learning_rate_scales(model, 0.5)
    layer1 = next(s for n, s in scales.items() if ".layer.1." in n)
    layer0 = next(s for n, s in scales.items() if ".layer.0." in n)
    embeddings = next(s for n, s in scales.items() if "embeddings.word_embeddings" in n)
    assert (layer1, layer0, embeddings) == (1.0, 0.5, 0.25)

    training = TrainingConfig(learning_rate=1e-3, encoder_learning_rate=1e-5, layer_decay=0.5)
    optimizer = PolyfuseModule(model, training, total_steps=10).configure_optimizers()["optimizer"]
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    by_name = {n: rate[id(p)] for n, p in named.items()}
    assert by_name["objectives.head.weight"] == 1e-3  # new layers
    assert any("lora_A" in n and r == 1e-3 for n, r in by_name.items())  # LoRA: new layers too
    query0 = next(r for n, r in by_name.items() if "layer.0.attention.self.query.base_layer.weight" in n)
    assert query0 == pytest.approx(1e-5 * 0.5)
    word = next(r for n, r in by_name.items() if "word_embeddings" in n)
    assert word == pytest.approx(1e-5 * 0.25)


@pytest.mark.slow
def test_lora_on_packaged_minilm_predicts_after_loading_as_in_training(
    text_table: Path, small_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text + numeric table, LoRA on the packaged all-MiniLM-L6-v2: the metrics the trained model scored
    on the test split during training are what the model loaded from a relative path scores."""
    encoder = EncoderConfig(name="text.minilm", adapter=AdapterConfig(method="lora", rank=4))
    model_dir = train_cli(text_table, tmp_path, encoder, small_config)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    training = metrics["training"]
    assert training["trainable_parameters"] < 0.05 * training["parameters"]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "evaluated.json"
    result = CliRunner().invoke(
        app, ["evaluate", "runs/x/model", str(text_table), "--split", "test", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    evaluated = json.loads(out.read_text())["label"]
    in_training = metrics["test"]["label"]
    shared = [
        k for k, v in in_training.items() if isinstance(v, float) and isinstance(evaluated.get(k), float)
    ]
    assert "accuracy" in shared
    for name in shared:
        assert evaluated[name] == pytest.approx(in_training[name], abs=1e-6), name
