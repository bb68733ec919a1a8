"""Peak memory of a CPU training run: give large freed buffers back to the operating system.

glibc's malloc serves a request of at least M_MMAP_THRESHOLD bytes with its own mmap, unmapped when freed.
The threshold starts at 128 KiB but rises to the size of every mmapped block that is freed (up to 32 MiB),
so after the first step the activations of a CNN come from the heap instead. Their sizes change from
batch to batch (audio padded to each batch's longest clip), the heap fragments, and the process keeps the
high-water mark of every shape it ever saw: the default AV-Digits run grows from 0.6 GB after start-up to
1.7 GB within three epochs. A fixed threshold of 4 MiB sends the big activations back to mmap (peak 1.2 GB)
while the many small tensors stay on the heap, but every large buffer's pages are then faulted in afresh:
epochs take 1.75x as long on an idle 2-core box (8.5 -> 15.5 s). Hence opt-in (training.mmap_threshold_mb),
for a run that must fit in memory more than it must be fast.

The default instead gives the free pages back every few training steps (`release_free_heap`, glibc's
malloc_trim: it also returns free pages in the middle of the heap, not only at its top). The heap still
serves the activations, so most steps fault in nothing; only pages freed since the last trim are touched
afresh. The default AV-Digits run (init's defaults, 2 threads, 3 seeds) peaked at 1.18-1.28 GB instead of
1.32-1.35 GB with a trim every 4 steps, for 6 % more time (122.5 vs 115.1 s); a trim every step cost 1.4x
the time in a shorter run (training.trim_heap_every_n_steps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
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
