"""An on-disk store of decoded / featurised inputs, keyed by file content and preprocessing parameters only.

Why content: a file edited in place must miss; a copy of the same file elsewhere may hit. Why parameters
only: changing the model, the optimiser or the number of epochs must never re-decode a dataset (Ludwig
#1078).

Entries live in packs (polyfuse.data.packs): immutable memory-mapped files of many entries each, written
atomically, so an epoch over cached features costs a dictionary lookup and a memory copy per cell rather
than a file open. A pass that computes features writes them in a few large packs (`batch_writes`);
outside of one, each new entry is its own small pack, and `compact` merges small packs later.

A file is not read again to find its content key while it looks as it did when it was last read (size,
mtime, ctime, inode): the packs keep those source records. One FeatureCache (one `prepare_data`, so one
run) checks each file once: the run trains on the files as it validated them. A record taken less than RACY_NS after the
file's last change is not trusted (the file may change again within the same timestamp tick), like git's
racily-clean index entries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.data.packs import (
    PACK_SUFFIX,
    DamagedPack,
    ForeignPack,
    Pack,
    PackContents,
    SourceRecord,
    write_pack,
)

# Bump when a decode or feature function changes its output for the same parameters.
CACHE_FORMAT = 1
STORE_FOLDER = "store"  # under the cache directory; `features/` held the one-file-per-entry cache before
RACY_NS = 2_000_000_000  # FAT's 2 s timestamps are the coarsest a local file system keeps
BATCH_FLUSH_BYTES = 64 << 20  # a pass writes a pack each time this much is waiting (and at its end)
SMALL_PACK_BYTES = 16 << 20  # `compact` merges packs smaller than this ...
MAX_SMALL_PACKS = 8  # ... once there are more than this many of them
STALE_TEMPORARY_S = 3600.0
RESCAN_S = 0.5  # a miss looks for packs other processes wrote at most this often


class NotCached(Exception):
    """Raised by `fetch_source(..., cached_only=True)` on a miss: the caller decodes elsewhere."""


def default_cache_dir() -> Path:
    """POLYFUSE_CACHE_DIR, else $XDG_CACHE_HOME/polyfuse, else ~/.cache/polyfuse — never the data folder."""
    if env := os.environ.get("POLYFUSE_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "polyfuse"


def params_digest(params: dict[str, Any]) -> str:
    text = json.dumps({"format": CACHE_FORMAT, **params}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def content_digest(content: bytes) -> str:
    return hashlib.blake2b(content, digest_size=20).hexdigest()


class FeatureCache:
    """get / put arrays by key; `fetch` and `fetch_source` combine the two around a compute function.

    directory None disables the cache (every fetch computes). Safe to share between processes: packs are
    never modified, only added (and merged by `compact`); each process reads them through its own maps.
    """

    def __init__(self, directory: Path | str | None) -> None:
        self.directory = None if directory is None else Path(directory).expanduser() / STORE_FOLDER
        self.hits = 0
        self.misses = 0
        self._reset()

    def _reset(self) -> None:
        self._packs: dict[str, Pack] = {}  # file name → open pack
        self._index: dict[bytes, tuple[Pack, int]] = {}  # entry key → (pack, entry number)
        self._sources: dict[str, SourceRecord] = {}  # absolute path → latest record
        self._pending = PackContents()
        self._batching = 0
        self._scanned_at = -1.0
        # path → content digest of the files this object has checked: each is checked once, so a run
        # trains on the files as it validated them, without a stat per cell per epoch
        self._checked: dict[Path, str] = {}

    # Memory maps do not travel to other processes (DataLoader workers started with spawn): reopen there.
    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "hits": self.hits, "misses": self.misses}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # --- keys ----------------------------------------------------------------------------------------
    @staticmethod
    def key(content: bytes, params_key: str) -> str:
        """Entry name: a hash of the encoded file's content digest and the preprocessing parameters' digest."""
        return FeatureCache._entry_key(content_digest(content), params_key).hex()

    @staticmethod
    @functools.lru_cache(maxsize=1 << 16)  # every epoch looks up the same files again
    def _entry_key(digest: str, params_key: str) -> bytes:
        return hashlib.blake2b(f"{digest}:{params_key}".encode(), digest_size=20).digest()

    # --- reading -------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Open packs written since the last look (by this or another process); forget removed ones."""
        if self.directory is None:
            return
        self._scanned_at = time.monotonic()
        try:
            names = {n for n in os.listdir(self.directory) if n.endswith(PACK_SUFFIX) and n[0] != "."}
        except FileNotFoundError:
            names = set()
        gone = set(self._packs) - names
        for name in gone:
            del self._packs[name]
        if gone:  # merged away by `compact`: their entries live on in the merged pack (or another one)
            self._index = {}
            for pack in self._packs.values():
                self._add_to_index(pack)
        for name in sorted(names - set(self._packs)):
            try:
                pack = Pack(self.directory / name)
            except (FileNotFoundError, ForeignPack):  # merged away since the listing / another version's
                continue
            except DamagedPack:
                # Only a damaged disk or a foreign writer makes one (ours are renamed into place whole):
                # drop it, its entries are recomputed.
                (self.directory / name).unlink(missing_ok=True)
                continue
            self._packs[name] = pack
            self._add_to_index(pack)
            for path, record in pack.sources.items():
                known = self._sources.get(path)
                if known is None or record.recorded_ns > known.recorded_ns:
                    self._sources[path] = record

    def _add_to_index(self, pack: Pack) -> None:
        for i, key in enumerate(pack.keys):
            self._index.setdefault(key, (pack, i))

    def _has(self, key: bytes) -> bool:
        """Whether the entry is stored (or waiting to be), looking for other processes' new packs on a miss."""
        if self._scanned_at < 0:
            self.refresh()
        if key in self._index or key in self._pending.arrays:
            return True
        if time.monotonic() - self._scanned_at < RESCAN_S:
            return False
        self.refresh()
        return key in self._index

    def _lookup(self, key: bytes) -> np.ndarray | None:
        """A read-only view of the entry, or None."""
        if not self._has(key):
            return None
        found = self._index.get(key)
        if found is None:
            return self._pending.arrays[key]
        pack, index = found
        return pack.entry(index)

    def has_source(self, source: Path, params_keys: tuple[str, ...]) -> bool:
        """Whether the file, recorded unchanged, has an entry stored for every one of `params_keys`.

        Validation's question about a file a previous run checked: answered from the records and the
        index alone, without reading the file or viewing an entry.
        """
        if self.directory is None:
            return False
        digest = self._recorded_digest(source)
        if digest is None or not all(self._has(self._entry_key(digest, k)) for k in params_keys):
            return False
        self.hits += len(params_keys)  # entries found, as a fetch would count them
        return True

    def get(self, key: str) -> np.ndarray | None:
        """The entry named by `key` (from `FeatureCache.key`) as a writable copy, or None."""
        if self.directory is None:
            return None
        view = self._lookup(bytes.fromhex(key))
        return None if view is None else np.array(view)

    # --- writing -------------------------------------------------------------------------------------
    def put(self, key: str, array: np.ndarray) -> None:
        if self.directory is not None:
            self._store(bytes.fromhex(key), array)

    def _store(self, key: bytes, array: np.ndarray) -> None:
        self._pending.add(key, array)
        if not self._batching or self._pending.nbytes >= BATCH_FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is waiting as one pack."""
        if self.directory is None or not self._pending:
            return
        pending, self._pending = self._pending, PackContents()
        path = write_pack(self.directory, pending)
        pack = Pack(path)
        self._packs[path.name] = pack
        self._add_to_index(pack)
        self._sources.update(pack.sources)

    def take_pending(self) -> PackContents:
        """What is waiting to be written, handed over instead (a decode worker sends it to its parent)."""
        pending, self._pending = self._pending, PackContents()
        return pending

    def add_pending(self, contents: PackContents) -> None:
        """Entries and records computed elsewhere, written like this process's own."""
        for key, array in contents.arrays.items():
            if key not in self._pending.arrays:  # arrays that arrived from another process: no copy
                self._pending.arrays[key] = array
                self._pending.nbytes += array.nbytes
        self._pending.sources.update(contents.sources)
        self._sources.update(contents.sources)
        if not self._batching or self._pending.nbytes >= BATCH_FLUSH_BYTES:
            self.flush()

    @contextmanager
    def batch_writes(self) -> Iterator[None]:
        """New entries wait and are written as a few large packs (at BATCH_FLUSH_BYTES and at the end)."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching:
                self.flush()

    def compact(self) -> None:
        """Merge the small packs into one once there are many (each entry outside a batch is its own pack)."""
        if self.directory is None:
            return
        self.refresh()
        self._remove_stale_temporaries()
        small = [p for p in self._packs.values() if p.nbytes < SMALL_PACK_BYTES]
        if len(small) <= MAX_SMALL_PACKS:
            return
        merged = PackContents()
        for pack in small:
            for key, array in pack.arrays().items():
                merged.add(key, array)
            for path, record in pack.sources.items():
                known = merged.sources.get(path)
                if known is None or record.recorded_ns > known.recorded_ns:
                    merged.sources[path] = record
        write_pack(self.directory, merged)
        for pack in small:
            # Readers that mapped it keep reading it (POSIX keeps an unlinked file while it is mapped).
            pack.path.unlink(missing_ok=True)
        self._reset()

    def _remove_stale_temporaries(self) -> None:
        """Temporary packs of writers killed mid-write (a live writer renames its own within seconds)."""
        assert self.directory is not None
        for tmp in self.directory.glob(".tmp-*"):
            try:
                if time.time() - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                    tmp.unlink()
            except FileNotFoundError:
                continue

    # --- fetching ------------------------------------------------------------------------------------
    def fetch(self, content: bytes, params_key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for (file content, params), computing and storing it on a miss.

        The caller reads the file once and hands its bytes both here and to `compute`.
        """
        if self.directory is None:
            return compute()
        return self._fetch_key(self._entry_key(content_digest(content), params_key), compute, copy=True)

    def fetch_source(
        self,
        source: Path | bytes,
        read: Callable[[], bytes],
        params_key: str,
        compute: Callable[[bytes], np.ndarray],
        *,
        cached_only: bool = False,
        copy: bool = True,
    ) -> np.ndarray:
        """The cached array for a file (or bytes) and params; `read` gives the bytes (with size checks).

        A file that still looks as recorded is not read. `cached_only`: raise NotCached instead of reading
        an unrecorded file or computing. `copy=False`: a read-only view into the pack (for checks).
        """
        if self.directory is None:
            if cached_only:
                raise NotCached(str(source))
            return compute(read())
        if isinstance(source, bytes):
            digest: str | None = content_digest(source)
        else:
            digest = self._recorded_digest(source)
        if digest is not None:
            key = self._entry_key(digest, params_key)
            view = self._lookup(key)
            if view is not None:
                self.hits += 1
                return np.array(view) if copy else view
        if cached_only:
            raise NotCached(str(source))
        content, digest = self._read_and_record(source, read)
        key = self._entry_key(digest, params_key)
        return self._fetch_key(key, lambda: compute(content), copy=copy)

    def _fetch_key(self, key: bytes, compute: Callable[[], np.ndarray], *, copy: bool) -> np.ndarray:
        view = self._lookup(key)
        if view is not None:
            self.hits += 1
            return np.array(view) if copy else view
        self.misses += 1
        array = compute()
        self._store(key, array)
        return array

    def _recorded_digest(self, path: Path) -> str | None:
        checked = self._checked.get(path)
        if checked is not None:
            return checked
        if self._scanned_at < 0:
            self.refresh()
        name = _path_key(path)
        record = self._sources.get(name)
        if record is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None  # `read` raises the error that names the file
        same = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino) == (
            record.size,
            record.mtime_ns,
            record.ctime_ns,
            record.inode,
        )
        if not (same and self._settled(record)):
            return None
        self._checked[path] = record.digest
        return record.digest

    @staticmethod
    def _settled(record: SourceRecord) -> bool:
        return record.mtime_ns < record.recorded_ns - RACY_NS

    def _read_and_record(self, source: Path | bytes, read: Callable[[], bytes]) -> tuple[bytes, str]:
        """The source's bytes and content digest; a file's stat is recorded with the digest."""
        if isinstance(source, bytes):
            content = read()
            return content, content_digest(content)
        recorded_ns = time.time_ns()
        try:
            before = os.stat(source)
        except OSError:
            content = read()  # raises the error that names the file
            return content, content_digest(content)
        content = read()
        self._checked[source] = content_digest(content)
        record = SourceRecord(
            before.st_size,
            before.st_mtime_ns,
            before.st_ctime_ns,
            before.st_ino,
            self._checked[source],
            recorded_ns,
        )
        # An unsettled record would never be trusted: keep it out of the packs (it is retaken next time).
        if self._settled(record) and before.st_size == len(content):
            self._sources[_path_key(source)] = record
            if self._batching:  # outside of a batch a record alone is not worth a pack
                self._pending.sources[_path_key(source)] = record
        return content, self._checked[source]


def _path_key(path: Path) -> str:
    return str(path) if path.is_absolute() else os.path.abspath(path)
