"""A Hugging Face backbone (any id or local folder, here a tiny random BERT) trains, is saved inside the
model directory, and loads with the original folder gone and the hub unreachable."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import polyfuse
from polyfuse.config import EncoderConfig
from polyfuse.training.run import train


@pytest.fixture
def tiny_bert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from polyfuse.data.modalities.text import tokenizer_path

    folder = tmp_path / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path("minilm"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("trainable", [False, True])
def test_hf_text_encoder_round_trips_offline(
    synthetic_table: Path, tiny_bert: Path, tmp_path: Path, small_config: Any, trainable: bool
) -> None:
    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=2)
    encoders = dict(config.encoders)
    encoders["text"] = EncoderConfig(
        name="text.hf", trainable=trainable, options={"name_or_path": str(tiny_bert)}
    )
    preprocessing = config.data.preprocessing.model_copy(
        update={"text": config.data.preprocessing.text.model_copy(update={"tokenizer": str(tiny_bert)})}
    )
    config = config.model_copy(
        update={"encoders": encoders, "data": config.data.model_copy(update={"preprocessing": preprocessing})}
    )
    messages: list[str] = []
    result = train(config, tmp_path / "run", show_progress=False, log=lambda m: messages.append(str(m)))
    assert any("(outputs cached): text" in m for m in messages) != trainable
    model_dir = result.model_dir
    assert (model_dir / "backbones" / "text" / "config.json").exists()
    assert (model_dir / "tokenizer").is_dir()

    rows = pd.read_csv(synthetic_table).head(12)
    before = polyfuse.load(model_dir).predict_proba(rows, base_dir=synthetic_table.parent)
    shutil.rmtree(tiny_bert)  # the original backbone folder is gone; the model directory must suffice
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(model_dir, moved)
    after = polyfuse.load(moved).predict_proba(rows, base_dir=synthetic_table.parent)
    np.testing.assert_allclose(before.to_numpy(), after.to_numpy(), rtol=1e-5, atol=1e-6)
