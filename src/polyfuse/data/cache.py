"""An on-disk cache of decoded / featurised inputs, keyed by file content and preprocessing parameters only.

Why content: a file edited in place must miss; a copy of the same file elsewhere may hit. Why parameters
only: changing the model, the optimiser or the number of epochs must never re-decode a dataset (Ludwig
#1078). Entries are `.npy` files written to a temporary name and renamed into place, so a reader never
sees half an entry and a crash mid-write leaves only a stray temporary file, which is ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Bump when a decode or feature function changes its output for the same parameters.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """POLYFUSE_CACHE_DIR, else $XDG_CACHE_HOME/polyfuse, else ~/.cache/polyfuse — never the data folder."""
    if env := os.environ.get("POLYFUSE_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "polyfuse"


def params_digest(params: dict[str, Any]) -> str:
    text = json.dumps({"format": CACHE_FORMAT, **params}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


class FeatureCache:
    """get / put arrays by key; `fetch` combines the two around a compute function.

    directory None disables the cache (every fetch computes).
    """

    def __init__(self, directory: Path | str | None) -> None:
        self.directory = None if directory is None else Path(directory).expanduser() / "features"
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(content: bytes, params_key: str) -> str:
        """Entry name: a hash of the encoded file's bytes and the preprocessing parameters' digest."""
        digest = hashlib.blake2b(content, digest_size=20)
        digest.update(params_key.encode())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            with path.open("rb") as f:
                array: np.ndarray = np.load(io.BytesIO(f.read()), allow_pickle=False)
                return array
        except FileNotFoundError:
            return None
        except (ValueError, OSError, EOFError):
            # A damaged entry (disk full, a bit flip, a foreign file) is a miss and will be rewritten.
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getvalue())
            os.replace(tmp, path)  # atomic: readers see the old entry, no entry, or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def fetch(self, content: bytes, params_key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for (file content, params), computing and storing it on a miss.

        The caller reads the file once and hands its bytes both here and to `compute`.
        """
        if self.directory is None:
            return compute()
        key = self.key(content, params_key)
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        array = compute()
        self.put(key, array)
        return array
