"""Packs: immutable files holding many cached feature arrays, read through one memory map each.

A pack is a safetensors file (the format polyfuse already writes models in: a JSON header, then raw
little-endian buffers, designed to be memory-mapped without a copy; any safetensors reader opens it):

    keys      uint8 (n, 20)    entry keys (a hash of the source file's content and the preprocessing)
    dtype     uint8 (n,)       index into the metadata's `dtypes` list
    offset    int64 (n,)       element offset of the entry in its dtype's buffer
    shape     int64 (n, 4)     entry shape, padded with -1
    data.<dt> <dt>  (total,)   one flat buffer per dtype: entries back to back, whatever their shapes
    source.paths    uint8 (bytes,)   source files' absolute paths, utf-8, NUL-separated
    source.stats    int64 (m, 5)     size, mtime_ns, ctime_ns, inode, recorded_ns of each
    source.digests  uint8 (m, 20)    its content digest

Variable-length entries (audio frames, T varies) sit back to back like fixed-shape ones: offsets and
shapes locate each, so an entry is a zero-copy view `data[offset : offset + prod(shape)].reshape(shape)`.
The source records (file and stat → content digest) are those gathered while the pack was filled; see
polyfuse.data.cache.

A pack is written to a temporary name and renamed into place, so a reader sees the whole pack or none.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.numpy

PACK_FORMAT = "polyfuse-pack-1"
PACK_SUFFIX = ".safetensors"
KEY_BYTES = 20
MAX_NDIM = 4

# safetensors dtype names → numpy (those a feature can have)
_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "BOOL": np.bool_,
}


class DamagedPack(ValueError):
    """A pack file that is not a complete pack (truncated or overwritten)."""


class ForeignPack(ValueError):
    """A whole pack of another format (another polyfuse version): left alone, not read."""


class SourceRecord(NamedTuple):
    """What a file looked like when its content digest was taken; a file that still looks the same is
    not read again. `recorded_ns` (wall clock) guards against a change within one timestamp tick."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    digest: str
    recorded_ns: int


@dataclass
class PackContents:
    """Entries and source records waiting to be written as one pack."""

    arrays: dict[bytes, np.ndarray] = field(default_factory=dict)
    sources: dict[str, SourceRecord] = field(default_factory=dict)
    nbytes: int = 0

    def add(self, key: bytes, array: np.ndarray) -> None:
        if key not in self.arrays:
            # a copy: the caller keeps the array it computed and may change it before the pack is written
            self.arrays[key] = np.array(array, order="C", copy=True)
            self.nbytes += array.nbytes

    def __bool__(self) -> bool:
        return bool(self.arrays or self.sources)


def write_pack(directory: Path, contents: PackContents) -> Path:
    """Write `contents` as a new pack in `directory` (atomically) and return its path."""
    keys = list(contents.arrays)
    arrays = [contents.arrays[k] for k in keys]
    if any(a.ndim > MAX_NDIM for a in arrays):
        raise ValueError(f"features of more than {MAX_NDIM} dimensions cannot be packed")
    dtypes = sorted({_dtype_name(a.dtype) for a in arrays})
    buffers: dict[str, list[np.ndarray]] = {d: [] for d in dtypes}
    filled = dict.fromkeys(dtypes, 0)
    codes = np.zeros(len(keys), dtype=np.uint8)
    offsets = np.zeros(len(keys), dtype=np.int64)
    shapes = np.full((len(keys), MAX_NDIM), -1, dtype=np.int64)
    for i, array in enumerate(arrays):
        name = _dtype_name(array.dtype)
        codes[i] = dtypes.index(name)
        offsets[i] = filled[name]
        shapes[i, : array.ndim] = array.shape
        buffers[name].append(array.reshape(-1))
        filled[name] += array.size
    tensors: dict[str, np.ndarray] = {
        "keys": np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES),
        "dtype": codes,
        "offset": offsets,
        "shape": shapes,
    }
    for name, parts in buffers.items():
        tensors[f"data.{name}"] = np.concatenate(parts)
    tensors |= _source_tensors(contents.sources)
    metadata = {"format": PACK_FORMAT, "dtypes": json.dumps(dtypes)}
    payload = safetensors.numpy.save(tensors, metadata=metadata)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=PACK_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        # the temporary name is unique, so the final name is too (several processes write packs at once)
        final = directory / Path(tmp).name.removeprefix(".tmp-")
        os.replace(tmp, final)  # atomic: readers list only complete packs
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _source_tensors(sources: dict[str, SourceRecord]) -> dict[str, np.ndarray]:
    """Source records as three arrays (parsing them stays cheap with thousands of files)."""
    paths = "\0".join(sources).encode("utf-8", "surrogateescape")
    records = list(sources.values())
    stats = [[r.size, r.mtime_ns, r.ctime_ns, r.inode, r.recorded_ns] for r in records]
    digests = b"".join(bytes.fromhex(r.digest) for r in records)
    return {
        "source.paths": np.frombuffer(paths, dtype=np.uint8),  # utf-8, NUL-separated
        "source.stats": np.array(stats, dtype=np.int64).reshape(len(records), 5),
        "source.digests": np.frombuffer(digests, dtype=np.uint8).reshape(len(records), KEY_BYTES),
    }


def _read_sources(tensors: dict[str, np.ndarray]) -> dict[str, SourceRecord]:
    text = tensors["source.paths"].tobytes().decode("utf-8", "surrogateescape")
    paths = text.split("\0") if text else []
    stats = tensors["source.stats"].tolist()
    digests = tensors["source.digests"]
    if not len(paths) == len(stats) == len(digests):
        raise ValueError("source records do not line up")
    return {
        path: SourceRecord(size, mtime, ctime, inode, digest.tobytes().hex(), recorded)
        for path, (size, mtime, ctime, inode, recorded), digest in zip(paths, stats, digests, strict=True)
    }


def _dtype_name(dtype: np.dtype[Any]) -> str:
    for name, numpy_type in _DTYPES.items():
        if dtype == numpy_type:
            return name
    raise ValueError(f"features of dtype {dtype} cannot be packed")


class Pack:
    """One pack file, memory-mapped: `entry(i)` is a read-only view into the map, nothing is copied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            try:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as e:  # an empty file cannot be mapped
                raise DamagedPack(f"{path}: {e}") from None
        # a plain read-only array over the map (np.memmap's subclass costs more per slice than the copy)
        self._map = np.frombuffer(mapped, dtype=np.uint8)
        header, start = self._header()
        meta = header.pop("__metadata__", {})
        if meta.get("format") != PACK_FORMAT:
            raise ForeignPack(f"{path}: not a {PACK_FORMAT} pack")
        tensors = {name: self._tensor(spec, start) for name, spec in header.items()}
        try:
            dtypes = json.loads(meta["dtypes"])
            self.sources = _read_sources(tensors)
            raw_keys = tensors["keys"].tobytes()
            self.keys = [raw_keys[i : i + KEY_BYTES] for i in range(0, len(raw_keys), KEY_BYTES)]
            self._codes: list[int] = tensors["dtype"].tolist()
            self._offsets: list[int] = tensors["offset"].tolist()
            self._shapes = [tuple(d for d in s if d >= 0) for s in tensors["shape"].tolist()]
            self._data: list[np.ndarray] = [tensors[f"data.{name}"] for name in dtypes]
        except (KeyError, TypeError, ValueError) as e:
            raise DamagedPack(f"{path}: {e}") from None

    def _header(self) -> tuple[dict[str, Any], int]:
        if len(self._map) < 8:
            raise DamagedPack(f"{self.path}: truncated")
        length = int.from_bytes(self._map[:8].tobytes(), "little")
        if length > len(self._map) - 8:
            raise DamagedPack(f"{self.path}: truncated header")
        try:
            header = json.loads(self._map[8 : 8 + length].tobytes())
        except ValueError as e:
            raise DamagedPack(f"{self.path}: {e}") from None
        if not isinstance(header, dict):
            raise DamagedPack(f"{self.path}: header is not a mapping")
        return header, 8 + length

    def _tensor(self, spec: dict[str, Any], start: int) -> np.ndarray:
        try:
            dtype = np.dtype(_DTYPES[spec["dtype"]])
            begin, end = (start + int(o) for o in spec["data_offsets"])
            shape = tuple(int(d) for d in spec["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise DamagedPack(f"{self.path}: {e}") from None
        if end > len(self._map) or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise DamagedPack(f"{self.path}: truncated data")
        tensor: np.ndarray = self._map[begin:end].view(dtype).reshape(shape)
        return tensor

    def entry(self, index: int) -> np.ndarray:
        shape = self._shapes[index]
        start = self._offsets[index]
        view: np.ndarray = self._data[self._codes[index]][start : start + math.prod(shape)].reshape(shape)
        return view

    def arrays(self) -> dict[bytes, np.ndarray]:
        return {key: self.entry(i) for i, key in enumerate(self.keys)}

    @property
    def nbytes(self) -> int:
        return len(self._map)
