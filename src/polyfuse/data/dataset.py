"""A PyTorch Dataset over a table and the collate function that pads rows into a `Batch`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from polyfuse.data.batch import Batch, ModalityBatch
from polyfuse.data.errors import DataError
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.schema import Modality
from polyfuse.data.table import Table

# polyfuse's own audio features are padded in time to a multiple of this many frames. Fewer distinct batch
# shapes let the allocator reuse the blocks the previous step freed instead of growing the heap: a 4-epoch
# AV-Digits run peaked at 1,036 MB instead of 1,166 MB, at the same speed. Encoders mask the padding
# (audio.cnn's time stride of 8 divides 16). Inputs read by a pretrained encoder keep their exact length:
# Whisper, for one, accepts only its own number of frames.
AUDIO_PAD_MULTIPLE = 16


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run torch ops on one thread inside the block (the setting before is restored after it).

    Preprocessing one row is many small ops (an STFT of one clip, a mel projection, one image's affine
    grid): split over threads, each pays the threads' start and join for a few microseconds of work. On
    the 2-core box, reading 8 augmented AV-Digits batches took 0.88 s on one thread against 3.7-5.8 s on
    two while other runs shared the cores, and the samples are bitwise the same. Switching costs ~0.2 µs.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MultimodalDataset(Dataset[dict[str, Any]]):
    """Rows of a table as preprocessed samples.

    augment=True draws train-time augmentation from a generator seeded by (seed, epoch, row), so a sample is
    the same whichever worker process builds it and whatever happened before: resuming mid-run replays it.
    Call `set_epoch` at the start of each epoch.
    """

    def __init__(
        self,
        table: Table,
        preprocessor: Preprocessor,
        *,
        augment: bool = False,
        seed: int = 0,
        with_targets: bool = True,
    ) -> None:
        self.rows = table.records()
        self.base_dir = table.base_dir
        self.allow_base64 = table.from_python
        self.allow_paths = table.media_paths
        self.preprocessor = preprocessor
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.with_targets = with_targets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, defer_augmentation=False)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The samples of one batch (the DataLoader asks for a batch's rows at once through this): the same
        as one `self[i]` each, but with the images' and clips' augmentation applied to the batch at once
        (`Preprocessor.apply_deferred`), read on one thread: see `one_intra_op_thread`."""
        with one_intra_op_thread():
            items = [self._item(i, defer_augmentation=True) for i in indices]
            self.preprocessor.apply_deferred([item["inputs"] for item in items])
        return items

    def _item(self, index: int, defer_augmentation: bool) -> dict[str, Any]:
        row = self.rows[index]
        generator = None
        if self.augment:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        try:
            inputs = self.preprocessor.encode_inputs(
                row,
                self.base_dir,
                allow_base64=self.allow_base64,
                allow_paths=self.allow_paths,
                generator=generator,
                defer_augmentation=defer_augmentation,
            )
            targets = self.preprocessor.encode_targets(row) if self.with_targets else {}
        except DataError as e:
            # Name the row: the preprocessor only knows columns.
            raise DataError([p.at_row(index) for p in e.problems]) from None
        return {"inputs": inputs, "targets": targets, "index": index}


class Collate:
    """Stack samples into a Batch: pad time / tokens, fill absent inputs with zeros and mark them absent.

    A picklable object (not a closure) so DataLoader worker processes can use it.
    """

    def __init__(
        self,
        inputs: dict[str, Modality],
        sizes: dict[str, int],
        text_pad: dict[str, int],
        exact_length: frozenset[str] = frozenset(),
    ) -> None:
        self.inputs = inputs
        self.sizes = sizes
        self.text_pad = text_pad
        self.exact_length = exact_length  # inputs padded to their longest row only (pretrained encoders')

    def __call__(self, samples: Sequence[dict[str, Any]]) -> Batch:
        batch_inputs = {
            name: self._collate_input(name, modality, [s["inputs"].get(name) for s in samples])
            for name, modality in self.inputs.items()
        }
        targets = {}
        if samples and samples[0]["targets"]:
            targets = {k: torch.stack([s["targets"][k] for s in samples]) for k in samples[0]["targets"]}
        index = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        return Batch(batch_inputs, targets, index)

    def _collate_input(self, name: str, modality: Modality, values: list[Tensor | None]) -> ModalityBatch:
        present = torch.tensor([v is not None for v in values], dtype=torch.bool)  # (B,)
        real = [v for v in values if v is not None]
        if modality is Modality.IMAGE:
            shape = real[0].shape if real else (self.sizes[name], 1, 1)
            stacked = torch.stack(
                [v if v is not None else torch.zeros(shape) for v in values]
            )  # (B, C, H, W)
            return ModalityBatch(stacked, present)
        if modality is Modality.AUDIO:
            # (F, T_i) → (B, F, T_max) with a (B, T_max) frame mask
            n_bins = real[0].shape[0] if real else self.sizes[name]
            length = max((v.shape[1] for v in real), default=1)
            if name not in self.exact_length:
                length = -(-length // AUDIO_PAD_MULTIPLE) * AUDIO_PAD_MULTIPLE
            padded, mask = pad_in_time(values, (n_bins, length), np.float32, 0)
            return ModalityBatch(padded, present, mask)
        if modality is Modality.TEXT:
            length = max((v.shape[0] for v in real), default=1)
            ids, mask = pad_in_time(values, (length,), np.int64, self.text_pad.get(name, 0))
            return ModalityBatch(ids, present, mask)
        if modality is Modality.NUMERIC:
            n = self.sizes[name]
            raw = torch.stack([v if v is not None else torch.full((n,), float("nan")) for v in values])
            given = ~torch.isnan(raw)  # (B, N)
            return ModalityBatch(torch.nan_to_num(raw, nan=0.0), present, given)
        k = self.sizes[name]
        ids = torch.stack(
            [v if v is not None else torch.zeros(k, dtype=torch.long) for v in values]
        )  # (B, K)
        return ModalityBatch(ids, present)


def pad_in_time(
    values: Sequence[Tensor | None], shape: tuple[int, ...], dtype: type[np.generic], fill: int
) -> tuple[Tensor, Tensor]:
    """Rows of different lengths (last dimension) → (B, *shape) filled with `fill` past each row's end, and
    the (B, shape[-1]) mask of real positions. Copied in numpy: a slice assignment there costs a third of
    torch's, and a batch has 64 of them."""
    padded = np.full((len(values), *shape), fill, dtype=dtype)
    lengths = np.zeros(len(values), dtype=np.int64)  # 0 for an absent row: all padding
    for i, v in enumerate(values):
        if v is not None:
            lengths[i] = v.shape[-1]
            padded[i, ..., : lengths[i]] = v.numpy()
    mask = np.arange(shape[-1]) < lengths[:, None]  # (B, T)
    return torch.from_numpy(padded), torch.from_numpy(mask)


def make_collate(preprocessor: Preprocessor) -> Collate:
    return Collate(
        preprocessor.inputs,
        preprocessor.input_sizes(),
        preprocessor.padding_values(),
        exact_length=frozenset(preprocessor.state.pretrained),
    )
