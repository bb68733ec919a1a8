"""DataLoaders whose order and augmentation depend only on (seed, epoch): a resumed epoch replays exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.schema import Modality
from polyfuse.data.table import Table

# Rows are sorted by length within groups of this many batches by default (training.length_group_batches);
# the larger, the less padding but the less random each batch's company (the Hugging Face Trainer's
# LengthGroupedSampler uses 50 too).
MEGABATCH_BATCHES = 50


class EpochSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch) — not from a global RNG stream that a restart would lose.

    The training module calls `set_epoch` before each epoch (set_sampler_epoch); the dataset's augmentation
    epoch moves with it.

    With `lengths` (one tuple per row, compared in order) and `batch_size`, rows of similar length share a
    batch: the permutation is cut into groups of `group_batches` batches, each group is sorted by length
    and cut into batches, and the batches are shuffled. A batch is then padded only to the longest of
    similar rows, not to the longest of 64 random ones. The one short batch (when batch_size does not
    divide the rows) comes last so that the DataLoader, which cuts this sequence every batch_size
    indices, sees the same batches.
    """

    def __init__(
        self,
        dataset: MultimodalDataset,
        seed: int,
        shuffle: bool = True,
        *,
        lengths: Sequence[tuple[int, ...]] | None = None,
        batch_size: int | None = None,
        group_batches: int = MEGABATCH_BATCHES,
    ) -> None:
        if lengths is not None and (batch_size is None or len(lengths) != len(dataset)):
            raise ValueError("length grouping needs batch_size and one length per row")
        self.dataset = dataset
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = None if lengths is None else list(lengths)
        self.batch_size = batch_size
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(len(self.dataset)))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        if self.lengths is None or self.batch_size is None:
            return iter(order)
        return iter(self._grouped(order, self.lengths, self.batch_size, generator, self.group_batches))

    @staticmethod
    def _grouped(
        order: list[int],
        lengths: list[tuple[int, ...]],
        batch_size: int,
        generator: torch.Generator,
        group_batches: int = MEGABATCH_BATCHES,
    ) -> list[int]:
        # a multiple of batch_size, so only the very last batch of the epoch can be short
        group_size = batch_size * group_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), group_size):
            # longest first; the sort is stable, so equal lengths keep their random order
            group = sorted(order[start : start + group_size], key=lambda i: lengths[i], reverse=True)
            batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
        short = [b for b in batches if len(b) < batch_size]  # at most one
        full = [b for b in batches if len(b) == batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return [i for batch in shuffled + short for i in batch]

    def __len__(self) -> int:
        return len(self.dataset)


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's share of each global batch, so that N processes step through the batches one
    process of batch size N × `batch_size` would (`batch_size` is per process, as in Lightning).

    Every process draws the same order from its EpochSampler (seed, epoch); the order is cut into global
    batches of `batch_size` × `world_size` rows and process `rank` takes rows rank, rank + N, ... of each.
    Nothing is padded or repeated: a short last global batch splits unevenly (3 rows on 2 processes: 2 and
    1), and `loss_scale` weighs each process's mean loss by its share of the rows, so that the averaged
    gradient DDP computes is the gradient of the mean over the global batch. A process with no row left in
    the last global batch (fewer rows than processes) still takes a step, since DDP needs every process
    in every all-reduce: it gets the batch's first row with loss scale 0.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} processes")
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        for start in range(0, len(order), self.global_batch_size):
            rows = order[start : start + self.global_batch_size]
            yield rows[self.rank :: self.world_size] or rows[:1]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.global_batch_size)

    def loss_scale(self, batch_index: int) -> float:
        """world_size × (this process's rows) / (the global batch's rows) for batch `batch_index` of an
        epoch: 1 for a full batch; DDP divides the sum of the processes' gradients by world_size."""
        rows = min(self.global_batch_size, len(self.sampler) - batch_index * self.global_batch_size)
        own = len(range(self.rank, rows, self.world_size))
        return self.world_size * own / rows


def sharded_batch_sampler(loader: object) -> ShardedBatchSampler | None:
    sampler = getattr(loader, "batch_sampler", None)
    return sampler if isinstance(sampler, ShardedBatchSampler) else None


def epoch_samplers(loader: object) -> list[EpochSampler]:
    """The EpochSampler behind a DataLoader: its sampler, or its batch sampler's (ShardedBatchSampler)."""
    candidates = [
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ]
    return [s for s in candidates if isinstance(s, EpochSampler)]


def set_sampler_epoch(loader: object, epoch: int) -> None:
    """Shuffling and augmentation of `epoch`: every process of a DDP run then draws the same permutation
    from (seed, epoch) and takes its own share of each global batch (ShardedBatchSampler), so the union of
    one step's batches over the processes is the batch a single process would have drawn."""
    for sampler in epoch_samplers(loader):
        sampler.set_epoch(epoch)


def sequence_lengths(dataset: MultimodalDataset) -> list[tuple[int, ...]]:
    """Per row, the lengths of its audio (frames) then text (tokens) inputs, 0 where one is missing.

    Sorting these tuples groups rows by their audio length first (audio frames cost far more than
    tokens), then by text length. Encodes every row once without augmentation (augmentation never changes
    a length); with the feature cache warm from validation that is a cheap pass.
    """
    kinds = (Modality.AUDIO, Modality.TEXT)
    names = [n for kind in kinds for n, m in dataset.preprocessor.inputs.items() if m is kind]
    lengths = []
    for row in dataset.rows:
        sample = dataset.preprocessor.encode_inputs(row, dataset.base_dir, allow_base64=dataset.allow_base64)
        # audio (F, T) and text (T,): the time / token axis is the last one
        lengths.append(tuple(0 if (t := sample.get(n)) is None else int(t.shape[-1]) for n in names))
    return lengths


def make_loader(
    table: Table,
    preprocessor: Preprocessor,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    with_targets: bool = True,
    group_by_length: bool = False,
    length_group_batches: int = MEGABATCH_BATCHES,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[dict[str, object]]:
    """group_by_length (training only): batch rows of similar audio / text length together.

    rank / world_size: process `rank` of a multi-process run gets its share of each global batch of
    batch_size × world_size rows (ShardedBatchSampler)."""
    dataset = MultimodalDataset(table, preprocessor, augment=train, seed=seed, with_targets=with_targets)
    # length groups are cut at the global batch size, so each global batch holds rows of similar length
    global_batch = batch_size * world_size
    lengths = sequence_lengths(dataset) if train and group_by_length else None
    sampler = EpochSampler(
        dataset,
        seed,
        shuffle=train,
        lengths=lengths,
        batch_size=global_batch,
        group_batches=length_group_batches,
    )
    return DataLoader(
        dataset,
        batch_sampler=ShardedBatchSampler(sampler, batch_size, rank=rank, world_size=world_size),
        collate_fn=make_collate(preprocessor),
        num_workers=num_workers,
        persistent_workers=False,  # workers must see the epoch set on the dataset before each epoch
        # Its own generator: creating an iterator draws a worker seed, which must not consume the global
        # RNG that dropout uses (else where Lightning creates the iterator would change the training).
        generator=torch.Generator().manual_seed(seed),
    )
