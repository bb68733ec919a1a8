"""text.transformer and text.bigru: small text encoders over token ids, trained from scratch."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.encoders.base import (
    EncoderModule,
    full_mask,
    key_padding_mask,
    masked_mean,
    transformer_stack,
)
from polyfuse.models.outputs import EncoderOutput


def _ids_and_mask(name: str, batch: ModalityBatch) -> tuple[Tensor, Tensor]:
    """(B, T) long ids and (B, T) bool mask (all True when the batch has none)."""
    ids = batch.values
    if ids.dim() != 2 or ids.dtype != torch.long:
        raise ValueError(f"{name}: expected token ids, long (B, T), got {ids.dtype} {tuple(ids.shape)}")
    mask = (
        batch.token_mask
        if batch.token_mask is not None
        else full_mask(ids.shape[0], ids.shape[1], ids.device)
    )
    return ids, mask


class TextTransformer(EncoderModule):
    """Token + learned position embeddings, pre-norm transformer layers with a key padding mask.

    tokens (B, T, D) one per token id; pooled = mean over the real tokens.
    """

    def __init__(
        self,
        vocab_size: int,  # the tokenizer's vocabulary size
        d_model: int = 128,  # D
        num_layers: int = 2,
        num_heads: int = 4,
        max_len: int = 512,  # longest sequence the position table covers
        dropout: float = 0.1,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.output_dim = d_model
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)
        self.transformer = transformer_stack(d_model, num_layers, num_heads, dropout)
        if not trainable:
            self.freeze()

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        ids, mask = _ids_and_mask("text.transformer", batch)
        if ids.shape[1] > self.max_len:
            raise ValueError(
                f"text.transformer: sequence length {ids.shape[1]} exceeds max_len={self.max_len}; "
                "truncate in the tokenizer or build the encoder with a larger max_len"
            )
        positions = torch.arange(ids.shape[1], device=ids.device)  # (T,)
        x = self.dropout(self.token_embedding(ids) + self.position_embedding(positions))  # (B, T, D)
        tokens = self.transformer(x, src_key_padding_mask=key_padding_mask(mask))  # (B, T, D)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=masked_mean(tokens, mask))


class TextBiGRU(EncoderModule):
    """Embedding + bidirectional GRU over the real tokens only (packed sequences), so padding never enters.

    tokens (B, T, 2H) the GRU outputs per token; pooled (B, 2H) = [last forward state, last backward state]
    (the backward direction's final state is the one at the first token). output_dim = 2 * hidden_size.
    """

    def __init__(
        self,
        vocab_size: int,  # the tokenizer's vocabulary size
        embed_dim: int = 128,
        hidden_size: int = 128,  # H per direction
        num_layers: int = 1,
        dropout: float = 0.1,  # on embeddings, and between GRU layers when num_layers > 1
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.output_dim = 2 * hidden_size
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            embed_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        if not trainable:
            self.freeze()

    def forward(self, batch: ModalityBatch) -> EncoderOutput:
        ids, mask = _ids_and_mask("text.bigru", batch)
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        # Packing needs lengths >= 1 on the CPU; a row with no tokens (absent input) runs on its first
        # (padding) token and its tokens are masked out below.
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        outputs, last = self.gru(packed)  # last: (layers * 2, B, H), rows in input order
        tokens, _ = pad_packed_sequence(outputs, batch_first=True, total_length=ids.shape[1])  # (B, T, 2H)
        pooled = torch.cat([last[-2], last[-1]], dim=-1)  # (B, 2H) top layer: forward, backward
        # A row without any real token gets zeros, like the masked means of the other encoders.
        pooled = pooled * mask.any(dim=1, keepdim=True).to(pooled.dtype)
        return EncoderOutput(tokens=tokens, token_mask=mask, pooled=pooled)
