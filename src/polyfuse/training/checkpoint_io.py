"""Lightning CheckpointIO with atomic, fsynced writes and pickle-free-by-default loading."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from polyfuse.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are serialised in memory first, then written atomically; a `kill -9` during a save
    leaves the previous checkpoint intact. Loading uses `weights_only=True`: a checkpoint file cannot run
    code (it only holds tensors, numbers, strings and containers of them)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        loaded: dict[str, Any] = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        return loaded
