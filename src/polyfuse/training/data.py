"""DataLoaders whose order and augmentation depend only on (seed, epoch): a resumed epoch replays exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.table import Table


class EpochSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch) — not from a global RNG stream that a restart would lose.

    Lightning calls `set_epoch` before each epoch; the dataset's augmentation epoch moves with it.
    """

    def __init__(self, dataset: MultimodalDataset, seed: int, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(len(self.dataset)))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())

    def __len__(self) -> int:
        return len(self.dataset)


def make_loader(
    table: Table,
    preprocessor: Preprocessor,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    with_targets: bool = True,
) -> DataLoader[dict[str, object]]:
    dataset = MultimodalDataset(table, preprocessor, augment=train, seed=seed, with_targets=with_targets)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(dataset, seed, shuffle=train),
        collate_fn=make_collate(preprocessor),
        num_workers=num_workers,
        persistent_workers=False,  # workers must see the epoch set on the dataset before each epoch
        # Its own generator: creating an iterator draws a worker seed, which must not consume the global
        # RNG that dropout uses (else where Lightning creates the iterator would change the training).
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )
