"""Atomic file writes: temp file in the same folder + fsync + rename + fsync of the folder.

A reader (or a process restarted after `kill -9`) sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_mode(path: Path, directory: bool = False) -> None:
    """mkstemp / mkdtemp make private (0600 / 0700) entries; give them the mode a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(file) on a temp file beside `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        plain_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written folder `staging` to `target`, replacing an older `target` if there is one.

    The old folder is renamed aside first and removed only after the new one is in place, so at every
    moment one complete folder exists at `target` or its aside name.
    """
    # Libraries that write into the folder make some entries private (safetensors: 0600 weights).
    for entry in staging.rglob("*"):
        if not entry.is_symlink():
            plain_mode(entry, directory=entry.is_dir())
    plain_mode(staging, directory=True)
    aside = target.with_name(f".{target.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        os.replace(target, aside)
    os.replace(staging, target)
    fsync_dir(target.parent)
    if aside.exists():
        shutil.rmtree(aside)
