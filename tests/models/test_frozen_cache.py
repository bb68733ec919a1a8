import torch

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.encoders import create_encoder
from polyfuse.models.frozen_cache import FrozenOutputCache


def _text_batch(rows: list[list[int]], pad_to: int) -> ModalityBatch:
    ids = torch.zeros(len(rows), pad_to, dtype=torch.long)
    mask = torch.zeros(len(rows), pad_to, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ModalityBatch(ids, torch.ones(len(rows), dtype=torch.bool), mask)


def test_frozen_encoder_runs_once_per_distinct_row_and_matches_direct_outputs() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(
        "text.transformer", vocab_size=50, d_model=16, num_layers=1, num_heads=2, trainable=False
    )
    calls = []
    encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].values.shape[0]))
    cache = FrozenOutputCache()
    rows = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    first = cache(encoder, _text_batch(rows, 4))
    assert calls == [3]
    # Same rows, another order and another padding length (as in the next epoch's batches): all hits.
    again = cache(encoder, _text_batch([rows[2], rows[0]], 7))
    assert calls == [3] and cache.hits == 2
    torch.testing.assert_close(again.pooled[0], first.pooled[2])
    direct = encoder(_text_batch(rows, 4))
    torch.testing.assert_close(first.pooled, direct.pooled)
    torch.testing.assert_close(first.tokens[first.token_mask], direct.tokens[direct.token_mask])
    # A new row misses and only it is encoded.
    calls.clear()
    cache(encoder, _text_batch([rows[1], [10, 11]], 2))
    assert calls == [1]


def test_cache_is_bounded() -> None:
    encoder = create_encoder("numeric.mlp", num_features=2, trainable=False)
    cache = FrozenOutputCache(max_rows=3)
    for i in range(10):
        values = torch.tensor([[float(i), 1.0]])
        cache(
            encoder,
            ModalityBatch(values, torch.ones(1, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)),
        )
    assert len(cache.rows) == 3
