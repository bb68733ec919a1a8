"""Long loops run with the process's existing objects frozen out of full garbage collections."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

from polyfuse.gc_freeze import long_lived_objects_frozen


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_frozen_only_inside_the_outermost_block_and_cycles_collected_after() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the cyclic collector frees it
    gone = weakref.ref(a)
    assert gc.get_freeze_count() == 0
    with long_lived_objects_frozen():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with long_lived_objects_frozen():
            assert gc.get_freeze_count() == frozen  # nested: no second freeze
        assert gc.get_freeze_count() == frozen  # ... and the inner exit does not unfreeze
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: the collector leaves the dead cycle alone
        fresh = Node()
        fresh.other = fresh
        fresh_gone = weakref.ref(fresh)
        del fresh
        gc.collect()
        assert fresh_gone() is None  # objects made inside the block are collected as usual
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # handed back: collected after the block


def test_training_fits_with_the_setup_frozen(
    synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    """Inside trainer.fit the setup is frozen out of full collections, and torch's deterministic mode does
    not fill new tensors' memory; both are as before once train returns."""
    import lightning as L
    import torch
    import torch.utils.deterministic

    from polyfuse.training.run import train

    seen: list[int] = []
    filled: list[bool] = []

    class FreezeCount(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            seen.append(gc.get_freeze_count())
            filled.append(torch.utils.deterministic.fill_uninitialized_memory)  # type: ignore[attr-defined]
            assert torch.are_deterministic_algorithms_enabled()  # training.deterministic: true

    config = small_config(synthetic_table, tmp_path / "config.yaml", epochs=1)
    train(config, tmp_path / "run", show_progress=False, log=lambda *_: None, callbacks=[FreezeCount()])
    assert seen and min(seen) > 10_000  # the imports, the model and the data
    assert gc.get_freeze_count() == 0
    assert filled and not any(filled)
    assert torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]


def test_the_cli_freezes_the_heap_at_exit(tmp_path: Path) -> None:
    """`polyfuse` registers a gc.freeze for interpreter exit (shutdown then skips its collections over
    every object): other atexit handlers still run, and the exit status is the command's."""
    import subprocess
    import sys

    marker = tmp_path / "handler-ran"
    script = (
        "import atexit, gc, sys\n"
        "from polyfuse import cli\n"
        # registered before main's, so it runs after it (atexit is last-in, first-out)
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write(str(gc.get_freeze_count())))\n"
        "sys.argv = ['polyfuse', 'data', 'inspect', 'no-such-table.csv']\n"
        "assert gc.get_freeze_count() == 0\n"
        "cli.main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "not found" in result.stderr  # the command's own error and status
    assert int(marker.read_text()) > 10_000  # frozen by the time the later handler ran
