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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h


def map_large_allocations(threshold_mb: float) -> bool:
    """Serve allocations of at least `threshold_mb` MiB with mmap from now on (process-wide; also stops
    glibc raising the threshold). Returns False where the C library is not glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold_mb * 1024 * 1024)))
