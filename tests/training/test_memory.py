"""training.mmap_threshold_mb: big buffers keep being mapped (and unmapped when freed) after the first
one is freed, where glibc's own rising threshold would move them to the heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")

# hblks in mallinfo2: the number of blocks malloc currently holds as their own mmap
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from polyfuse.training.memory import map_large_allocations

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fixed":
        assert map_large_allocations(4.0)
    first = torch.empty(6 * 2**20, dtype=torch.uint8)  # 6 MiB: above glibc's starting threshold
    del first  # glibc without a fixed threshold now raises it past 6 MiB
    before = libc.mallinfo2().hblks
    second = torch.empty(6 * 2**20, dtype=torch.uint8)
    print(libc.mallinfo2().hblks - before)
    """
)


def _mapped_blocks_added(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_a_fixed_threshold_keeps_large_buffers_mapped() -> None:
    assert _mapped_blocks_added("glibc") == 0  # the second 6 MiB buffer came from the heap
    assert _mapped_blocks_added("fixed") == 1  # mapped on its own: freeing it returns the memory


def test_the_training_option_reaches_the_allocator(
    synthetic_table: Path, small_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`training.mmap_threshold_mb` in a config on disk is applied by `polyfuse train` before any work."""
    from polyfuse.config import load_config
    from polyfuse.training import run

    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=1)
    config = config.model_copy(
        update={"training": config.training.model_copy(update={"mmap_threshold_mb": 4.0})}
    )
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    applied: list[float] = []
    monkeypatch.setattr(run, "map_large_allocations", lambda mb: applied.append(mb) or True)
    run.train(
        load_config(tmp_path / "config.yaml"), tmp_path / "run", show_progress=False, log=lambda *_: None
    )
    assert applied == [4.0]
    assert (tmp_path / "run" / "model" / "polyfuse.json").is_file()


def test_release_free_heap_calls_glibc() -> None:
    # What it saves is measured in bench/time_to_accuracy.py (peak RSS); here, that it runs on glibc.
    from polyfuse.training.memory import release_free_heap

    assert release_free_heap() is True


def test_training_trims_the_heap_when_it_grows_or_every_n_steps(
    synthetic_table: Path, small_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default (`training.trim_heap_on_growth: 0.05`) the heap is trimmed only at steps whose resident
    memory has grown past the first epoch's; `trim_heap_every_n_steps: n` trims every n-th step; both null:
    never."""
    import lightning as L

    from polyfuse.training import memory, run

    class CountSteps(L.Callback):
        steps = 0

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
            CountSteps.steps = trainer.global_step

    trims: list[int] = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: trims.append(1) or True)
    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=3)
    assert config.training.trim_heap_on_growth == 0.05 and config.training.trim_heap_every_n_steps is None
    resident = (1_000.0 * 1.1**k for k in range(10_000))  # 10 % a step: past 5 % at every step
    monkeypatch.setattr(memory, "resident_mb", lambda: next(resident))
    run.train(config, tmp_path / "grows", show_progress=False, log=lambda *_: None, callbacks=[CountSteps()])
    steps_per_epoch = CountSteps.steps // 3
    # epochs 1 and 2: a trim, then the next step rebases the reference, then a trim again ...
    assert len(trims) == (2 * steps_per_epoch + 1) // 2
    trims.clear()
    monkeypatch.setattr(memory, "resident_mb", lambda: 1_000.0)  # flat: never trimmed
    run.train(config, tmp_path / "flat", show_progress=False, log=lambda *_: None)
    assert trims == []

    every_4 = config.training.model_copy(update={"trim_heap_every_n_steps": 4, "trim_heap_on_growth": None})
    run.train(
        config.model_copy(update={"training": every_4}),
        tmp_path / "every",
        show_progress=False,
        log=lambda *_: None,
        callbacks=[CountSteps()],
    )
    assert CountSteps.steps >= 4 and len(trims) == CountSteps.steps // 4
    trims.clear()
    never = config.training.model_copy(update={"trim_heap_on_growth": None})
    monkeypatch.setattr(memory, "resident_mb", lambda: next(resident))
    run.train(
        config.model_copy(update={"training": never}),
        tmp_path / "never",
        show_progress=False,
        log=lambda *_: None,
    )
    assert trims == []


def test_heap_trim_on_growth_follows_what_a_step_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference is the first epoch's highest step end; after a trim, the next step end may raise it
    (the memory a step needs grew), so a run is not trimmed at every step from then on."""
    from types import SimpleNamespace

    from polyfuse.training import memory

    trims: list[int] = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: trims.append(1) or True)
    readings = iter([800.0, 900.0, 850.0, 940.0, 946.0, 1_000.0, 1_010.0, 1_020.0, 1_100.0, 960.0, 1_020.0])
    callback = memory.HeapTrimOnGrowth(0.05, read_resident_mb=lambda: next(readings))
    for epoch in [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]:
        callback.on_train_batch_end(SimpleNamespace(current_epoch=epoch))  # type: ignore[arg-type]
    # reference 900 -> threshold 945: 940 kept, 946 trimmed, 1000 becomes the reference (threshold 1050),
    # 1010 and 1020 kept, 1100 trimmed, 960 after it does not lower the reference, 1020 kept
    assert len(trims) == 2 and callback.reference == 1_000.0


def test_resident_memory_is_read_on_linux() -> None:
    from polyfuse.training.memory import resident_mb

    resident = resident_mb()
    assert resident is not None and 10 < resident < 100_000
    grown = np.ones(50 * 2**20 // 8)  # 50 MiB touched
    after = resident_mb()
    assert after is not None and after - resident > 40
    del grown


def test_heap_trim_once_per_optimizer_step_under_gradient_accumulation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from polyfuse.training import memory

    trims: list[int] = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: trims.append(1) or True)
    callback = memory.HeapTrim(every_n_steps=4)
    for step in [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]:  # 2 batches per optimizer step
        callback.on_train_batch_end(SimpleNamespace(global_step=step))  # type: ignore[arg-type]
    assert len(trims) == 2  # after steps 4 and 8, once each
