"""Peak memory of a CPU training run: give large freed buffers back to the operating system.

glibc's malloc serves a request of at least M_MMAP_THRESHOLD bytes with its own mmap, unmapped when freed.
The threshold starts at 128 KiB but rises to the size of every mmapped block that is freed (up to 32 MiB),
so after the first step the activations of a CNN come from the heap instead. Their sizes change from
batch to batch (audio padded to each batch's longest clip), the heap fragments, and the process keeps the
high-water mark of every shape it ever saw: an fp32 AV-Digits run grows from 0.6 GB after start-up to
1.32-1.35 GB over 20 epochs. A fixed threshold of 4 MiB sends the big activations back to mmap (peak
1.2 GB) while the many small tensors stay on the heap, but every large buffer's pages are then faulted in
afresh: epochs take 1.75x as long on an idle 2-core box (8.5 -> 15.5 s). Hence opt-in
(training.mmap_threshold_mb), for a run that must fit in memory more than it must be fast.

Giving the free pages back (`release_free_heap`, glibc's malloc_trim: it also returns free pages in the
middle of the heap, not only at its top) is cheap, but the next step faults the pages it reuses in again:
trimming after every 4th step cost 7-12 % of the epoch time under bf16 autocast, where the heap hardly
grows at all. So by default the heap is trimmed only when it has grown (`HeapTrimOnGrowth`): when the
resident memory at a step's end is more than training.trim_heap_on_growth above its highest at a step's end
in the first epoch. training.trim_heap_every_n_steps trims on a fixed cadence instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import lightning as L

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # musl has neither mallopt nor malloc_trim
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def release_free_heap() -> bool:
    """Give the free pages of malloc's heap back to the system (glibc's malloc_trim(0)). Returns False
    where the C library is not glibc; True otherwise, whether or not there was anything to give back."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def map_large_allocations(threshold_mb: float) -> bool:
    """Serve allocations of at least `threshold_mb` MiB with mmap from now on (process-wide; also stops
    glibc raising the threshold). Returns False where the C library is not glibc (macOS, Windows, musl)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_mb * 1024 * 1024)))


class HeapTrim(L.Callback):
    """`release_free_heap` after every `every_n_steps`-th optimizer step (once per step: with gradient
    accumulation several batches end on the same global_step)."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self._last_trimmed = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_trimmed:
            release_free_heap()
            self._last_trimmed = step


def resident_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux: /proc/self/statm); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class HeapTrimOnGrowth(L.Callback):
    """`release_free_heap` at the end of a training step whose resident memory is more than `growth` above
    the reference: the highest at a step's end during the first epoch (where every part of the model has
    run and the heap holds one step's activations).

    After a trim the next step's end becomes a candidate for the reference: if the memory a step really
    needs has grown (a longer batch, state that piles up), the reference follows it instead of trimming
    after every step; what the heap kept of shapes no longer in use, it does not follow.
    """

    def __init__(self, growth: float, read_resident_mb: Callable[[], float | None] | None = None) -> None:
        self.growth = growth
        self.read_resident_mb = read_resident_mb  # None: resident_mb
        self.reference = 0.0
        self._rebase = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        resident = (self.read_resident_mb or resident_mb)()
        if resident is None:
            return
        if trainer.current_epoch == 0 or self._rebase or self.reference == 0.0:  # (0: resumed past epoch 0)
            self.reference = max(self.reference, resident)
            self._rebase = False
            return
        if resident > self.reference * (1.0 + self.growth) and release_free_heap():
            self._rebase = True
