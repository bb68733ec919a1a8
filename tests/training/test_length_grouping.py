"""Length-grouped batching: every row once per epoch, reproducible from (seed, epoch), far less padding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from polyfuse.data.prepare import prepare_data
from polyfuse.training import data as training_data
from polyfuse.training.data import EpochSampler, make_loader, sequence_lengths
from polyfuse.training.run import train


class _Rows:
    """Stands in for a MultimodalDataset: the sampler only needs len() and set_epoch()."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        pass


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _padding(batches: list[list[int]], lengths: list[tuple[int]]) -> int:
    """Frames of padding when each batch is padded to its longest row."""
    return sum(max(lengths[i][0] for i in b) * len(b) - sum(lengths[i][0] for i in b) for b in batches)


def _sampler(lengths: list[tuple[int]] | None, batch_size: int = 16, seed: int = 3) -> EpochSampler:
    return EpochSampler(_Rows(1000), seed, lengths=lengths, batch_size=batch_size)  # type: ignore[arg-type]


def _epoch(sampler: EpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_grouped_epoch_is_a_permutation_with_a_fraction_of_the_padding() -> None:
    # skewed like speech: mostly short clips, a few long ones
    generator = torch.Generator().manual_seed(0)
    lengths = [(int(n),) for n in torch.empty(1000).exponential_(1 / 40, generator=generator) + 5]
    grouped, plain = _sampler(lengths), _sampler(None)
    for epoch in range(3):
        order = _epoch(grouped, epoch)
        assert sorted(order) == list(range(1000))
        assert _padding(_batches(order, 16), lengths) < 0.1 * _padding(
            _batches(_epoch(plain, epoch), 16), lengths
        )


def test_grouped_order_depends_only_on_seed_and_epoch_and_batches_are_shuffled() -> None:
    lengths = [((i * 7919) % 300,) for i in range(1000)]
    first, again = _sampler(lengths), _sampler(lengths)
    assert _epoch(first, 4) == _epoch(again, 4)  # a resumed epoch replays the same batches
    assert _epoch(first, 4) != _epoch(first, 5)
    assert _epoch(first, 4) != _epoch(_sampler(lengths, seed=4), 4)
    longest = [max(lengths[i][0] for i in b) for b in _batches(_epoch(first, 0), 16)]
    # not served longest-first: the batch order is shuffled
    assert longest != sorted(longest, reverse=True)


def test_the_short_batch_comes_last_so_the_dataloader_cuts_the_same_batches() -> None:
    lengths = [(n,) for n in range(1000)]
    order = _epoch(_sampler(lengths, batch_size=48), 0)  # 1000 = 20 * 48 + 40
    batches = _batches(order, 48)
    assert [len(b) for b in batches] == [48] * 20 + [40]
    # one group (50 batches) covers all 1000 rows here, so every full batch holds 48 consecutive lengths
    assert all(max(lengths[i][0] for i in b) - min(lengths[i][0] for i in b) == 47 for b in batches[:-1])


def test_smaller_groups_keep_batches_less_tied_to_length() -> None:
    lengths = [(n,) for n in range(1000)]
    sampler = EpochSampler(_Rows(1000), 3, lengths=lengths, batch_size=48, group_batches=2)  # type: ignore[arg-type]
    order = _epoch(sampler, 0)
    assert sorted(order) == list(range(1000))
    batches = _batches(order, 48)
    # each group of 96 random rows is sorted and halved: a batch spans far more than 48 lengths, yet
    # less than the random batches of no grouping would
    spans = [max(lengths[i][0] for i in b) - min(lengths[i][0] for i in b) for b in batches[:-1]]
    plain = [
        max(lengths[i][0] for i in b) - min(lengths[i][0] for i in b)
        for b in _batches(_epoch(_sampler(None, 48), 0), 48)[:-1]
    ]
    assert min(spans) > 47 and sum(spans) < 0.8 * sum(plain)


def test_loader_batches_rows_of_similar_audio_and_text_length(
    synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    config = small_config(synthetic_table, tmp_path / "config.yaml")
    prepared = prepare_data(config.data)
    table = prepared.split("train")
    lengths = sequence_lengths(make_loader(table, prepared.preprocessor, batch_size=16, train=True).dataset)  # type: ignore[arg-type]
    sequences = [n for n, m in prepared.preprocessor.inputs.items() if m.value in ("audio", "text")]
    assert sequences
    padded = {}
    for grouped in (False, True):
        loader = make_loader(table, prepared.preprocessor, batch_size=16, train=True, group_by_length=grouped)
        rows, pad = [], 0
        for batch in loader:
            rows += batch.row_index.tolist()
            for name in sequences:  # frames / tokens of present rows short of the batch's longest row
                inputs = batch.inputs[name]
                assert inputs.token_mask is not None
                real = inputs.token_mask[inputs.present].sum(1)  # (present rows,)
                # (not every False in the mask: audio is also rounded up to a multiple of 16 frames)
                pad += int((real.max() - real).sum()) if len(real) else 0
        assert sorted(rows) == list(range(len(table)))
        padded[grouped] = pad
    assert len(lengths) == len(table) and max(lengths) > min(lengths)
    assert padded[True] < 0.5 * padded[False]


def test_training_with_length_grouping(
    synthetic_table: Path, small_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[int] = []  # rows whose lengths were measured, per call

    def spy(dataset: Any) -> list[tuple[int, ...]]:
        measured.append(len(dataset))
        return sequence_lengths(dataset)

    groups: list[int] = []  # group_batches of each grouped epoch
    grouped = EpochSampler._grouped

    def grouped_spy(*args: Any) -> list[int]:
        groups.append(args[-1])
        return grouped(*args)

    monkeypatch.setattr(training_data, "sequence_lengths", spy)
    monkeypatch.setattr(EpochSampler, "_grouped", staticmethod(grouped_spy))
    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=2)
    config = config.model_copy(
        update={
            "training": config.training.model_copy(
                update={"group_by_length": True, "length_group_batches": 3}
            )
        }
    )
    result = train(config, tmp_path / "run", show_progress=False)
    assert result.epochs == 2
    assert groups and set(groups) == {3}
    # the training split, and only it (validation and test batches keep the table's order)
    assert measured == [len(prepare_data(config.data, show_progress=False).split("train"))]
